//! Plugin manifests (`plugin.toml`).
//!
//! A manifest names the component, its version, per-call limits, which
//! changes it wants (subscription), what it may write or read
//! (capabilities), its retry policy, its golden fixtures and the `[config]`
//! handed to `init`. Unknown keys are errors; every error names the file,
//! the key and what would be valid.
//!
//! ```toml
//! name = "case-search"
//! version = "0.1.0"
//! component = "case_search.wasm"   # relative to this file
//! fixtures = "fixtures"            # optional: golden fixtures directory
//!
//! [limits]
//! fuel = 20_000_000     # instructions (roughly) per change; >= 20x what
//!                       # `pillowtop plugin check` reports for a large change
//! memory_mb = 64        # linear memory cap
//! timeout_ms = 1000     # wall-clock deadline per call
//! output_mb = 16        # data the host copies out of one call
//!
//! [subscription]        # empty lists mean "all"
//! topics = ["case-sql"]
//! document_types = ["CommCareCase"]
//! domains = []
//!
//! [capabilities]
//! indices = ["case-search"]
//! tables = []
//! lookups = []
//!
//! [prefetch]          # per granted lookup: JSON pointers into the document
//! # users = ["/form/meta/userID"]   # whose values the plugin will look up;
//!                       # the host reads a chunk's keys in one query first
//! # phone-numbers = [{ pointer = "/case_json/phone", keep = "digits" }]
//!                       # a key made of the value's digits only
//!
//! [retry]             # CommCare's schedule: 5, 20, 45 minutes, then parked
//! enabled = true
//! base_minutes = 5
//! attempts_per_series = 3
//! max_total_attempts = 9
//!
//! [config]              # free-form, passed to init as JSON
//! domains = "*"
//!
//! [config_files]        # JSON files (or folders of *.json) read by the host
//! data_sources = ["data_sources"]  # -> config.data_sources = [{"file", "spec"}]
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read plugin manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// Why.
        source: crate::file::ReadError,
    },
    /// The TOML is invalid or has unknown or mistyped keys.
    #[error("invalid plugin manifest {path}: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message: line, key and the valid keys.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid plugin manifest {path}: key `{key}`: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// The offending key, dotted.
        key: String,
        /// What is wrong and what would be valid.
        message: String,
    },
}

/// Per-call resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Fuel per call: Wasm instructions, roughly. It makes a call's cost
    /// deterministic and stops runaway plugins. How to choose it: run
    /// `pillowtop plugin check` (fuel per fixture) on your largest realistic
    /// changes and give at least 20x the largest. For case-search on an
    /// average 1.5 KB case (`make bench`): Rust ~64 thousand, Python
    /// (CPython inside the component) ~1.2 million, JavaScript
    /// (StarlingMonkey) ~10 million; an interpreter needs 20-150x a
    /// compiled guest.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear memory cap in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Wall-clock deadline per call, in milliseconds. It bounds the whole
    /// call: clocks and polls never wait in the sandbox, and host calls
    /// that could (lookups) check it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most data the host copies out of one call, in MiB: every string and
    /// list of the result as the host holds it (documents, ids, row cells
    /// at 32 bytes each plus their text), and of each log line or lookup.
    /// `memory_mb` bounds the guest; this bounds what the guest makes the
    /// host allocate (a guest can return one string many times over). A
    /// call over it fails with an `output` error.
    #[serde(default = "default_output_mb")]
    pub output_mb: u32,
}

fn default_fuel() -> u64 {
    50_000_000
}
fn default_memory_mb() -> u32 {
    64
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_output_mb() -> u32 {
    16
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: default_fuel(),
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
            output_mb: default_output_mb(),
        }
    }
}

impl Limits {
    /// `output_mb` in bytes.
    pub fn output_bytes(&self) -> usize {
        self.output_mb as usize * 1024 * 1024
    }
}

/// Which changes the plugin is called for; an empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Topics, e.g. `case-sql`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Document types, e.g. `CommCareCase`.
    #[serde(default)]
    pub document_types: Vec<String>,
    /// Domains.
    #[serde(default)]
    pub domains: Vec<String>,
}

impl Subscription {
    /// Whether a change with these fields is wanted.
    pub fn matches(&self, topic: &str, document_type: Option<&str>, domain: Option<&str>) -> bool {
        fn ok(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        }
        ok(&self.topics, Some(topic))
            && ok(&self.document_types, document_type)
            && ok(&self.domains, domain)
    }
}

/// What the plugin may write and read. Anything else is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Indices it may declare and write.
    #[serde(default)]
    pub indices: Vec<String>,
    /// Tables it may declare and write.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Lookup resources it may read.
    #[serde(default)]
    pub lookups: Vec<String>,
}

/// How the retry queue treats this plugin's pillow errors (`[retry]`).
///
/// CommCare's schedule by default: after failure `a` of a series the next
/// try is `base_minutes × a²` later (5, 20, 45 minutes); failure
/// `attempts_per_series + 1` parks the error. An operator's `errors retry`
/// starts a new series; once an error has failed more than
/// `max_total_attempts` times in all, a failed try parks it again at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Whether the retry queue tries this plugin's failures again at all
    /// (`false`: they are recorded parked, for an operator).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The first delay, in minutes (CommCare: 5).
    #[serde(default = "default_base_minutes")]
    pub base_minutes: u32,
    /// Failures in a series before the error is parked (CommCare: 3).
    #[serde(default = "default_attempts_per_series")]
    pub attempts_per_series: u32,
    /// Failures in all after which a failed try parks the error at once
    /// (CommCare: 9).
    #[serde(default = "default_max_total_attempts")]
    pub max_total_attempts: u32,
}

fn default_true() -> bool {
    true
}
fn default_base_minutes() -> u32 {
    5
}
fn default_attempts_per_series() -> u32 {
    3
}
fn default_max_total_attempts() -> u32 {
    9
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            enabled: true,
            base_minutes: default_base_minutes(),
            attempts_per_series: default_attempts_per_series(),
            max_total_attempts: default_max_total_attempts(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    component: PathBuf,
    #[serde(default)]
    fixtures: Option<PathBuf>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    subscription: Subscription,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    prefetch: BTreeMap<String, Vec<RawPrefetch>>,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    config_files: BTreeMap<String, Vec<PathBuf>>,
}

/// One `[prefetch]` entry as written: a pointer, or a table with how
/// its value becomes a key.
#[derive(Debug)]
enum RawPrefetch {
    Pointer(String),
    Keyed(RawKeyed),
}

impl<'de> Deserialize<'de> for RawPrefetch {
    // By hand rather than `untagged`, so that a bad table says what is
    // wrong in it (an unknown `keep`, a missing `pointer`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawPrefetch, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawPrefetch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a JSON pointer such as \"/form/meta/userID\", or a table such as { pointer = \"/case_json/phone\", keep = \"digits\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPrefetch, E> {
                Ok(RawPrefetch::Pointer(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawPrefetch, A::Error> {
                RawKeyed::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPrefetch::Keyed)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyed {
    pointer: String,
    #[serde(default)]
    keep: Keep,
}

impl RawPrefetch {
    fn pointer(&self) -> &str {
        match self {
            RawPrefetch::Pointer(p) => p,
            RawPrefetch::Keyed(k) => &k.pointer,
        }
    }
}

impl From<RawPrefetch> for PrefetchKey {
    fn from(raw: RawPrefetch) -> PrefetchKey {
        match raw {
            RawPrefetch::Pointer(pointer) => PrefetchKey {
                pointer,
                keep: Keep::Whole,
            },
            RawPrefetch::Keyed(RawKeyed { pointer, keep }) => PrefetchKey { pointer, keep },
        }
    }
}

/// Where a prefetched key is: `"/pointer"` or `{ pointer = "/pointer",
/// keep = "digits" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchKey {
    /// A JSON pointer into the change's document.
    pub pointer: String,
    /// What of the value makes the key.
    pub keep: Keep,
}

/// What of a value at a prefetch pointer is the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The value as it is (a string's text, a number as written).
    #[default]
    Whole,
    /// Its ASCII digits only: a phone number as a plugin normalises it
    /// (`+254 (712) 345-678` -> `254712345678`). A value with other
    /// characters gives a key the plugin never asks for, which costs one
    /// key in the query and nothing else.
    Digits,
}

/// A validated manifest. Paths are resolved against the manifest's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Plugin name: lower-case letters, digits and `-`.
    pub name: String,
    /// The author's version string (shown beside the content hash).
    pub version: String,
    /// The component file.
    pub component: PathBuf,
    /// The golden fixtures directory, if any.
    pub fixtures: Option<PathBuf>,
    /// Per-call limits.
    pub limits: Limits,
    /// Which changes it wants.
    pub subscription: Subscription,
    /// What it may touch.
    pub capabilities: Capabilities,
    /// Per granted lookup resource: where in a change's document the
    /// keys the plugin will ask for are (read for a whole chunk in one
    /// query before the plugin runs).
    pub prefetch: BTreeMap<String, Vec<PrefetchKey>>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// `[config]` as JSON text, as handed to `init`, with the
    /// `[config_files]` read into it.
    pub config_json: String,
    /// The files and folders `[config_files]` names (watched like the
    /// component: a change is a hot reload).
    pub config_files: Vec<PathBuf>,
}

/// Upper bounds that keep a typo from disabling a limit.
const MAX_MEMORY_MB: u32 = 4096;
const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_OUTPUT_MB: u32 = 1024;
/// Most failures `[retry]` may allow, per series or in all.
const MAX_RETRY_ATTEMPTS: u32 = 100;
/// Longest first retry delay `[retry]` may set (a day).
const MAX_RETRY_BASE_MINUTES: u32 = 24 * 60;
/// Largest manifest file read; real ones are a few KB.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest file `[config_files]` may name (a UCR data source is a few KB
/// to a few hundred).
const MAX_CONFIG_FILE_BYTES: u64 = 16 << 20;

impl Manifest {
    /// Load and validate the manifest at `path`.
    ///
    /// # Errors
    ///
    /// See [`ManifestError`]; each names the file and key.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            crate::file::read_text_bounded(path, MAX_MANIFEST_BYTES, "a manifest is at most 1 MiB")
                .map_err(|source| ManifestError::Read {
                    path: path.to_owned(),
                    source,
                })?;
        Manifest::parse(&text, path)
    }

    /// Parse and validate manifest `text` as if read from `path`.
    ///
    /// # Errors
    ///
    /// See [`ManifestError`].
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &str, message: String| ManifestError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || !raw.name.as_bytes()[0].is_ascii_lowercase()
        {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must start with a-z and use only a-z, 0-9 and '-', e.g. \"case-search\"",
                    raw.name
                ),
            ));
        }
        if raw.version.trim().is_empty() {
            return Err(invalid(
                "version",
                "must not be empty, e.g. \"0.1.0\"".into(),
            ));
        }
        let l = raw.limits;
        if l.fuel == 0 {
            return Err(invalid(
                "limits.fuel",
                "must be at least 1; 20_000_000 suits a Rust plugin doing JSON work".into(),
            ));
        }
        if l.memory_mb == 0 || l.memory_mb > MAX_MEMORY_MB {
            return Err(invalid(
                "limits.memory_mb",
                format!("{} is out of range 1..={MAX_MEMORY_MB}", l.memory_mb),
            ));
        }
        if l.timeout_ms == 0 || l.timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid(
                "limits.timeout_ms",
                format!("{} is out of range 1..={MAX_TIMEOUT_MS}", l.timeout_ms),
            ));
        }
        if l.output_mb == 0 || l.output_mb > MAX_OUTPUT_MB {
            return Err(invalid(
                "limits.output_mb",
                format!("{} is out of range 1..={MAX_OUTPUT_MB}", l.output_mb),
            ));
        }
        let r = &raw.retry;
        if r.attempts_per_series == 0 || r.attempts_per_series > MAX_RETRY_ATTEMPTS {
            return Err(invalid(
                "retry.attempts_per_series",
                format!(
                    "{} is out of range 1..={MAX_RETRY_ATTEMPTS} (CommCare uses 3; set retry.enabled = false to park every failure)",
                    r.attempts_per_series
                ),
            ));
        }
        if r.max_total_attempts == 0 || r.max_total_attempts > MAX_RETRY_ATTEMPTS {
            return Err(invalid(
                "retry.max_total_attempts",
                format!(
                    "{} is out of range 1..={MAX_RETRY_ATTEMPTS} (CommCare uses 9)",
                    r.max_total_attempts
                ),
            ));
        }
        if r.base_minutes > MAX_RETRY_BASE_MINUTES {
            return Err(invalid(
                "retry.base_minutes",
                format!(
                    "{} is over {MAX_RETRY_BASE_MINUTES} (one day; CommCare uses 5)",
                    r.base_minutes
                ),
            ));
        }
        for (resource, pointers) in &raw.prefetch {
            let key = format!("prefetch.{resource}");
            if !raw.capabilities.lookups.contains(resource) {
                return Err(invalid(
                    &key,
                    format!(
                        "prefetches lookup resource {resource:?}, which capabilities.lookups does not grant ({:?})",
                        raw.capabilities.lookups
                    ),
                ));
            }
            if let Some(bad) = pointers
                .iter()
                .map(RawPrefetch::pointer)
                .find(|p| !p.starts_with('/'))
            {
                return Err(invalid(
                    &key,
                    format!(
                        "{bad:?} is not a JSON pointer into the document; write e.g. \"/form/meta/userID\""
                    ),
                ));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config_json = serde_json::to_string(&raw.config)
            .map_err(|e| invalid("config", format!("cannot be expressed as JSON: {e}")))?;
        let mut config_files = Vec::new();
        for (key, entries) in &raw.config_files {
            let setting = format!("config_files.{key}");
            if raw.config.contains_key(key) {
                return Err(invalid(
                    &setting,
                    format!("[config] also sets {key:?}; give it in one place"),
                ));
            }
            let files = read_config_files(dir, entries, &mut config_files)
                .map_err(|m| invalid(&setting, m))?;
            config_json.pop(); // the closing brace
            if config_json.len() > 1 {
                config_json.push(',');
            }
            config_json.push_str(&serde_json::to_string(key).expect("a string"));
            config_json.push(':');
            config_json.push_str(&files);
            config_json.push('}');
        }
        Ok(Manifest {
            path: path.to_owned(),
            name: raw.name,
            version: raw.version,
            component: dir.join(raw.component),
            fixtures: raw.fixtures.map(|f| dir.join(f)),
            limits: l,
            subscription: raw.subscription,
            capabilities: raw.capabilities,
            prefetch: raw
                .prefetch
                .into_iter()
                .map(|(resource, keys)| {
                    (resource, keys.into_iter().map(PrefetchKey::from).collect())
                })
                .collect(),
            retry: raw.retry,
            config_json,
            config_files,
        })
    }
}

/// Read the JSON files `entries` name (a folder: its `*.json` files, by
/// name) into `[{"file": ..., "spec": ...}]`, each spec kept as written
/// (member order matters to plugins); every path read goes to `watched`.
fn read_config_files(
    dir: &Path,
    entries: &[PathBuf],
    watched: &mut Vec<PathBuf>,
) -> Result<String, String> {
    let mut out = String::from("[");
    for entry in entries {
        let path = dir.join(entry);
        let mut files = Vec::new();
        if path.is_dir() {
            let listing = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            for item in listing {
                let item = item.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
                if item.path().extension().is_some_and(|x| x == "json") {
                    files.push((entry.join(item.file_name()), item.path()));
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(format!("folder {} has no .json file", path.display()));
            }
            watched.push(path.clone());
        } else {
            files.push((entry.clone(), path.clone()));
        }
        for (shown, file) in files {
            let text = crate::file::read_text_bounded(
                &file,
                MAX_CONFIG_FILE_BYTES,
                "a config file is at most 16 MiB",
            )
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let spec: Box<serde_json::value::RawValue> = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(r#"{"file":"#);
            out.push_str(&serde_json::to_string(&shown.display().to_string()).expect("a string"));
            out.push_str(r#","spec":"#);
            out.push_str(spec.get());
            out.push('}');
            watched.push(file);
        }
    }
    out.push(']');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("plugins/x/plugin.toml"))
    }

    #[test]
    fn prefetch_keys_are_pointers_or_tables_saying_what_to_keep() {
        let m = parse(
            "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[capabilities]\nlookups = [\"users\", \"numbers\"]\n\
             [prefetch]\nusers = [\"/form/meta/userID\"]\nnumbers = [{ pointer = \"/case_json/phone\", keep = \"digits\" }, { pointer = \"/phone\" }]",
        )
        .unwrap();
        let key = |pointer: &str, keep| PrefetchKey {
            pointer: pointer.into(),
            keep,
        };
        assert_eq!(m.prefetch["users"], [key("/form/meta/userID", Keep::Whole)]);
        assert_eq!(
            m.prefetch["numbers"],
            [
                key("/case_json/phone", Keep::Digits),
                key("/phone", Keep::Whole)
            ]
        );
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = parse(
            r#"
            name = "case-search"
            version = "1.2.0"
            component = "cs.wasm"
            fixtures = "fixtures"
            [limits]
            fuel = 1000
            memory_mb = 16
            timeout_ms = 50
            [subscription]
            document_types = ["CommCareCase"]
            [capabilities]
            indices = ["case-search"]
            [retry]
            base_minutes = 1
            attempts_per_series = 2
            [config]
            domains = ["a", "b"]
            nested = { k = 1 }
            "#,
        )
        .unwrap();
        assert_eq!(m.component, Path::new("plugins/x/cs.wasm"));
        assert_eq!(m.fixtures.as_deref(), Some(Path::new("plugins/x/fixtures")));
        assert_eq!(
            m.limits,
            Limits {
                fuel: 1000,
                memory_mb: 16,
                timeout_ms: 50,
                output_mb: 16,
            }
        );
        assert_eq!(
            m.retry,
            RetryPolicy {
                enabled: true,
                base_minutes: 1,
                attempts_per_series: 2,
                max_total_attempts: 9,
            }
        );
        assert_eq!(m.config_json, r#"{"domains":["a","b"],"nested":{"k":1}}"#);
        assert!(m.subscription.matches("any", Some("CommCareCase"), None));
        assert!(!m.subscription.matches("any", Some("XFormInstance"), None));
        assert!(!m.subscription.matches("any", None, None));
    }

    #[test]
    fn config_files_are_read_into_config_in_order_and_as_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ds")).unwrap();
        std::fs::write(dir.path().join("ds/b.json"), r#"{"z": 1, "a": [2]}"#).unwrap();
        std::fs::write(dir.path().join("ds/a.json"), r#"{"only": true}"#).unwrap();
        std::fs::write(dir.path().join("ds/notes.txt"), "not read").unwrap();
        std::fs::write(dir.path().join("one.json"), "[1]").unwrap();
        let manifest = dir.path().join("plugin.toml");
        let text = "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[config]\nk = 1\n[config_files]\nsources = [\"ds\", \"one.json\"]";
        let m = Manifest::parse(text, &manifest).unwrap();
        assert_eq!(
            m.config_json,
            r#"{"k":1,"sources":[{"file":"ds/a.json","spec":{"only": true}},{"file":"ds/b.json","spec":{"z": 1, "a": [2]}},{"file":"one.json","spec":[1]}]}"#
        );
        assert_eq!(
            m.config_files.len(),
            4,
            "the folder and its three files: {:?}",
            m.config_files
        );

        std::fs::write(dir.path().join("ds/c.json"), "{oops").unwrap();
        let err = Manifest::parse(text, &manifest).unwrap_err().to_string();
        for needle in ["config_files.sources", "c.json is not JSON", "line 1"] {
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
        let clash = "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[config]\nsources = 1\n[config_files]\nsources = [\"one.json\"]";
        let err = Manifest::parse(clash, &manifest).unwrap_err().to_string();
        assert!(err.contains("[config] also sets \"sources\""), "{err}");
        let missing = "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[config_files]\nsources = [\"nope.json\"]";
        let err = Manifest::parse(missing, &manifest).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("nope.json"),
            "{err}"
        );
    }

    #[test]
    fn defaults() {
        let m = parse("name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"").unwrap();
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.config_json, "{}");
        assert!(m.subscription.matches("t", None, None));
    }

    #[test]
    fn errors_name_file_key_and_valid_values() {
        let cases = [
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\nfule = 3",
                vec![
                    "plugins/x/plugin.toml",
                    "unknown field `fule`",
                    "`fuel`, `memory_mb`, `timeout_ms`, `output_mb`",
                ],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\ncolour = 1",
                vec!["unknown field `colour`", "`component`"],
            ),
            (
                "version = \"1\"\ncomponent = \"a.wasm\"",
                vec!["missing field `name`"],
            ),
            (
                "name = \"A b\"\nversion = \"1\"\ncomponent = \"a.wasm\"",
                vec!["key `name`", "a-z"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\nmemory_mb = 0",
                vec!["key `limits.memory_mb`", "1..=4096"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\nfuel = 0",
                vec!["key `limits.fuel`"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\noutput_mb = 0",
                vec!["key `limits.output_mb`", "1..=1024"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\noutput_mb = 2048",
                vec!["key `limits.output_mb`", "2048 is out of range"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[limits]\ntimeout_ms = \"fast\"",
                vec!["timeout_ms", "invalid type"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[subscription]\ndoc_types = []",
                vec!["unknown field `doc_types`", "`document_types`"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[retry]\nattempts_per_series = 0",
                vec!["key `retry.attempts_per_series`", "retry.enabled = false"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[retry]\nmax_attempts = 9",
                vec!["unknown field `max_attempts`", "`max_total_attempts`"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[prefetch]\nusers = [\"/form/meta/userID\"]",
                vec![
                    "key `prefetch.users`",
                    "capabilities.lookups does not grant",
                ],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[capabilities]\nlookups = [\"users\"]\n[prefetch]\nusers = [\"form.meta.userID\"]",
                vec!["key `prefetch.users`", "not a JSON pointer"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[capabilities]\nlookups = [\"n\"]\n[prefetch]\nn = [{ pointer = \"phone\", keep = \"digits\" }]",
                vec!["key `prefetch.n`", "\"phone\" is not a JSON pointer"],
            ),
            (
                "name = \"a\"\nversion = \"1\"\ncomponent = \"a.wasm\"\n[capabilities]\nlookups = [\"n\"]\n[prefetch]\nn = [{ pointer = \"/phone\", keep = \"letters\" }]",
                vec!["unknown variant `letters`", "expected `whole` or `digits`"],
            ),
        ];
        for (text, needles) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("plugins/x/plugin.toml"), "{err}");
            for n in needles {
                assert!(err.contains(n), "expected {n:?} in: {err}");
            }
        }
        let err = Manifest::load(Path::new("/nonexistent/plugin.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read plugin manifest /nonexistent/plugin.toml"),
            "{err}"
        );
    }
}
