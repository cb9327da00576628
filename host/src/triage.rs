//! Operator tools for pillow errors (`pillowtop errors ...`): a listing
//! with counts, one error in full, re-queueing, purging, and turning a
//! stored failure into a golden fixture of its plugin, so a production
//! failure becomes a plugin test in one command.

use crate::config::HostConfig;
use crate::errors::ops::{Counts, Filter};
use crate::errors::{ErrorState, PillowError};
use crate::fixtures;
use crate::manifest::Manifest;
use crate::store::Store;
use crate::time::format_rfc3339_ms;
use crate::wasm::{Runtime, RuntimeOptions};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    /// The store failed.
    #[error("{store}: {source}")]
    Store {
        /// Which store.
        store: String,
        /// The error.
        source: sqlx::Error,
    },
    /// No such error.
    #[error("no pillow error with id {0} (ids are in the first column of `pillowtop errors list`)")]
    NotFound(i64),
    /// The request cannot be done, and why.
    #[error("{0}")]
    Refused(String),
    /// The plugin for `--expect-current` could not be loaded.
    #[error("loading plugin {manifest}: {message}")]
    Plugin {
        /// Its manifest.
        manifest: String,
        /// Why.
        message: String,
    },
    /// The fixture file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn store_err(store: &Store) -> impl Fn(sqlx::Error) -> TriageError + '_ {
    |source| TriageError::Store {
        store: store.location().to_owned(),
        source,
    }
}

/// What `errors list` shows.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    /// Counts of every error the filter matches.
    pub counts: Counts,
    /// The newest matching errors, at most the limit.
    pub errors: Vec<PillowError>,
    /// Now, for relative times.
    #[serde(skip)]
    pub now_ms: i64,
}

/// The listing of `filter`'s errors in `store`.
///
/// # Errors
///
/// When the store fails.
pub async fn list(store: &Store, filter: &Filter, limit: u32) -> Result<Listing, TriageError> {
    let db = store.db();
    Ok(Listing {
        counts: crate::errors::ops::counts(db, filter)
            .await
            .map_err(store_err(store))?,
        errors: crate::errors::ops::list(db, filter, limit)
            .await
            .map_err(store_err(store))?,
        now_ms: crate::time::now_ms(),
    })
}

/// "in 5m", "2h ago", or "-".
fn relative(at: Option<i64>, now: i64) -> String {
    let Some(at) = at else { return "-".into() };
    let d = (at - now).abs() / 1000;
    let amount = match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m", d / 60),
        3600..86_400 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    };
    if at >= now {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn one_line(text: &str, chars: usize) -> String {
    crate::wasm::check::clip(&text.replace(['\n', '\r'], " "), chars)
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let join = |v: &[(String, u64)]| {
            v.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "{} pillow errors", c.total)?;
        if c.total > 0 {
            writeln!(f, "  by state:  {}", join(&c.by_state))?;
            writeln!(f, "  by kind:   {}", join(&c.by_kind))?;
            let shown = c.by_domain.len().min(10);
            let more = if c.by_domain.len() > shown {
                format!(" (and {} more domains)", c.by_domain.len() - shown)
            } else {
                String::new()
            };
            writeln!(f, "  by domain: {}{more}", join(&c.by_domain[..shown]))?;
        }
        if self.errors.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        let rows: Vec<[String; 9]> = self
            .errors
            .iter()
            .map(|e| {
                [
                    e.id.to_string(),
                    e.state.to_string(),
                    e.kind.to_string(),
                    format!("{}/{}", e.pillow, or_dash(&e.processor)),
                    e.domain.clone().unwrap_or_else(|| "-".into()),
                    one_line(&e.doc_id, 40),
                    format!("{}/{}", e.series_attempts, e.total_attempts),
                    relative(e.next_attempt_ms, self.now_ms),
                    one_line(&e.message, 60),
                ]
            })
            .collect();
        let header = [
            "ID",
            "STATE",
            "KIND",
            "PILLOW/PROCESSOR",
            "DOMAIN",
            "DOC",
            "TRIES",
            "NEXT",
            "MESSAGE",
        ];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    let _ = write!(out, "{cell:<w$}  ");
                }
            }
            out
        };
        writeln!(f, "{}", line(&header.map(String::from)))?;
        for r in &rows {
            writeln!(f, "{}", line(r))?;
        }
        if (self.errors.len() as u64) < c.total {
            writeln!(
                f,
                "({} of {} shown, newest first; --limit N for more)",
                self.errors.len(),
                c.total
            )?;
        }
        Ok(())
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// One error in full, as `errors show` prints it.
pub fn show(e: &PillowError, now_ms: i64) -> String {
    let at = |ms: i64| format!("{} ({})", format_rfc3339_ms(ms), relative(Some(ms), now_ms));
    let mut out = String::new();
    let _ = writeln!(out, "pillow error {}", e.id);
    let _ = writeln!(out, "  state:      {}", e.state);
    let _ = writeln!(out, "  kind:       {}", e.kind);
    let _ = writeln!(out, "  pillow:     {}", e.pillow);
    let _ = writeln!(
        out,
        "  processor:  {} {}",
        or_dash(&e.processor),
        e.plugin_version.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        out,
        "  document:   {} (type {}, domain {})",
        e.doc_id,
        e.document_type.as_deref().unwrap_or("-"),
        e.domain.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "  change:     {} offset {}", e.tp, e.offset);
    let _ = writeln!(
        out,
        "  attempts:   {} in this series, {} in all",
        e.series_attempts, e.total_attempts
    );
    let _ = writeln!(out, "  first:      {}", at(e.first_attempt_ms));
    let _ = writeln!(out, "  last:       {}", at(e.at_ms));
    let next = match (e.state, e.next_attempt_ms) {
        (ErrorState::Pending, Some(ms)) => at(ms),
        (ErrorState::Resolved, _) => format!(
            "- (resolved {})",
            e.resolved_at_ms.map(at).unwrap_or_default()
        ),
        _ => "- (parked: `pillowtop errors retry ID` queues it again)".into(),
    };
    let _ = writeln!(out, "  next:       {next}");
    let _ = writeln!(out, "  message:\n    {}", e.message.replace('\n', "\n    "));
    let change = String::from_utf8_lossy(&e.change);
    let pretty = serde_json::from_str::<serde_json::Value>(&change)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| change.into_owned());
    let _ = writeln!(
        out,
        "  change (as the feed gave it):\n    {}",
        pretty.replace('\n', "\n    ")
    );
    out
}

/// One error by id.
///
/// # Errors
///
/// When the store fails or there is no such error.
pub async fn get(store: &Store, id: i64) -> Result<PillowError, TriageError> {
    crate::errors::ops::get(store.db(), id)
        .await
        .map_err(store_err(store))?
        .ok_or(TriageError::NotFound(id))
}

/// Write error `id`'s stored change as a golden fixture of its plugin in
/// `dir` (named `error-ID-DOC.json`); with `expect_current`, the live
/// version's result (actions, or error kind) is its expectation (read the
/// plugin's manifest from `config`'s pillow), otherwise an
/// `expect_error` of the stored kind, to edit into what it should be.
///
/// # Errors
///
/// See [`TriageError`].
pub async fn write_fixture(
    config: &HostConfig,
    store: &Store,
    id: i64,
    dir: &Path,
    expect_current: bool,
) -> Result<PathBuf, TriageError> {
    let e = get(store, id).await?;
    let change: Box<serde_json::value::RawValue> = std::str::from_utf8(&e.change)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or_else(|| {
            TriageError::Refused(format!(
                "pillow error {id}'s change is not JSON (a `decode` error): a fixture needs a change a plugin can be given"
            ))
        })?;
    let mut fixture = serde_json::json!({
        "description": format!(
            "pillow error {id}: {} {} in pillow {} at {} offset {} ({}; attempts {})",
            e.kind, e.doc_id, e.pillow, e.tp, e.offset, one_line(&e.message, 200), e.total_attempts
        ),
        "topic": &*e.tp.topic,
        "partition": e.tp.partition,
        "offset": e.offset,
        "change": change,
    });
    if expect_current {
        let manifest = manifest_of(config, &e)?;
        let result = current_result(config, &manifest, &e).await?;
        match result {
            Ok(actions) => {
                fixture["expect"] =
                    serde_json::Value::Array(actions.iter().map(fixtures::action_json).collect());
            }
            Err(kind) => fixture["expect_error"] = kind.into(),
        }
    } else {
        fixture["expect_error"] = e.kind.as_str().into();
    }
    std::fs::create_dir_all(dir).map_err(|source| TriageError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let safe: String = e
        .doc_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let path = dir.join(format!("error-{id}-{safe}.json"));
    let text = serde_json::to_string_pretty(&fixture).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(|source| TriageError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The manifest of the processor `e` names, from its pillow in `config`.
fn manifest_of(config: &HostConfig, e: &PillowError) -> Result<Manifest, TriageError> {
    let pillow = config.pillow(&e.pillow).ok_or_else(|| {
        TriageError::Refused(format!(
            "pillow {:?} of error {} is not in {}: --expect-current needs its plugin's manifest",
            e.pillow,
            e.id,
            config.path.display()
        ))
    })?;
    for path in &pillow.processors {
        let m = Manifest::load(path).map_err(|err| TriageError::Plugin {
            manifest: path.display().to_string(),
            message: err.to_string(),
        })?;
        if m.name == e.processor {
            return Ok(m);
        }
    }
    Err(TriageError::Refused(format!(
        "pillow {} has no processor named {:?} (error {} is a `{}` error{}): --expect-current needs its plugin",
        e.pillow,
        e.processor,
        e.id,
        e.kind,
        if e.processor.is_empty() {
            " of no processor"
        } else {
            ""
        }
    )))
}

/// What the live version of `manifest` makes of `e`'s change: its actions,
/// or its error kind.
async fn current_result(
    config: &HostConfig,
    manifest: &Manifest,
    e: &PillowError,
) -> Result<Result<Vec<crate::action::Action>, &'static str>, TriageError> {
    let options = RuntimeOptions::from_config(&config.runtime);
    let shown = manifest.path.display().to_string();
    let manifest = manifest.clone();
    let e = e.clone();
    let plugin_err = |message: String| TriageError::Plugin {
        manifest: shown.clone(),
        message,
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let runtime = Runtime::new(options)
            .map_err(|err| format!("cannot start the WebAssembly runtime: {err:#}"))?;
        let (mut processor, _) = runtime.load(&manifest).map_err(|err| err.to_string())?;
        let change = crate::change::decode(e.feed_message()).map_err(|u| u.error.to_string())?;
        Ok::<_, String>(processor.process(&change).map_err(|f| f.kind.as_str()))
    })
    .await
    .map_err(|err| plugin_err(err.to_string()))?
    .map_err(plugin_err)?;
    Ok(outcome)
}
