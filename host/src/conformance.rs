//! `pillowtop plugin check`, the conformance kit: the same for a plugin in
//! any language. Load the plugin (compile or take the compile cache),
//! instantiate it in the host's sandbox, call `init` and check its
//! declaration against the manifest's capabilities, then run its golden
//! fixtures (each several times on one instance and once on a fresh one)
//! and measure fuel and memory against the limits.

use crate::fixtures::{self, FixtureError, FixtureResult};
use crate::manifest::{Manifest, ManifestError};
use crate::wasm::cache::CacheOutcome;
use crate::wasm::{LoadError, PluginVersion, Runtime, RuntimeOptions};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Real documents can be many times larger than fixtures: advise at least
/// this many times the fuel of the costliest fixture.
pub const FUEL_HEADROOM: u64 = 20;

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Compile cache directory.
    pub compile_cache: PathBuf,
    /// Calls of each fixture on one instance (a fresh one runs it once more).
    pub runs: usize,
    /// Largest component file loaded, in bytes.
    pub max_component_bytes: u64,
}

/// Why a plugin could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The plugin does not load (read, compile, link, `init`, declaration).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The fixtures cannot be read.
    #[error(transparent)]
    Fixtures(#[from] FixtureError),
    /// The fixtures directory holds no fixture.
    #[error("fixtures directory {0} has no *.json files")]
    NoFixtures(PathBuf),
    /// The runtime could not start, or a worker thread failed.
    #[error("{0}")]
    Runtime(String),
}

/// What `plugin check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The manifest checked.
    pub manifest: Manifest,
    /// The plugin's version.
    pub version: PluginVersion,
    /// Compile (or cache load) time and where it came from.
    pub compile: (Duration, CacheOutcome),
    /// First instantiation.
    pub instantiate: Duration,
    /// First `init`.
    pub init: Duration,
    /// Indices declared.
    pub indices: Vec<String>,
    /// Tables declared.
    pub tables: Vec<String>,
    /// Each fixture's result; `None` when the manifest names no fixtures.
    pub fixtures: Option<Vec<FixtureResult>>,
}

impl CheckReport {
    /// Fixtures that failed.
    pub fn failed(&self) -> usize {
        self.fixtures
            .iter()
            .flatten()
            .filter(|r| r.failure.is_some())
            .count()
    }
}

/// Check the plugin of `manifest_path`. Blocking work runs on blocking
/// threads.
///
/// # Errors
///
/// See [`CheckError`]. Failing fixtures are not an error: they are in the
/// report ([`CheckReport::failed`]).
pub async fn check(manifest_path: &Path, options: CheckOptions) -> Result<CheckReport, CheckError> {
    let manifest = Manifest::load(manifest_path)?;
    let runtime = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(options.compile_cache),
        max_component_bytes: options.max_component_bytes,
        ..RuntimeOptions::default()
    })
    .map_err(|e| CheckError::Runtime(format!("cannot start the WebAssembly runtime: {e:#}")))?;
    let m = manifest.clone();
    let runs = options.runs;
    tokio::task::spawn_blocking(move || {
        let (mut processor, timings) = runtime.load(&m)?;
        let plugin = processor.plugin().clone();
        let info = plugin.info();
        let mut report = CheckReport {
            version: plugin.version().clone(),
            compile: (timings.compile, timings.cache),
            instantiate: timings.instantiate,
            init: timings.init,
            indices: info.indices.iter().map(|i| i.name.clone()).collect(),
            tables: info.tables.iter().map(|t| t.name.clone()).collect(),
            fixtures: None,
            manifest: m,
        };
        if let Some(dir) = &report.manifest.fixtures {
            let loaded = fixtures::load(dir)?;
            if loaded.is_empty() {
                return Err(CheckError::NoFixtures(dir.clone()));
            }
            report.fixtures = Some(
                loaded
                    .iter()
                    .map(|(name, f)| fixtures::run_times(&mut processor, name, f, runs))
                    .collect(),
            );
        }
        Ok(report)
    })
    .await
    .map_err(|e| CheckError::Runtime(format!("the check's worker thread failed: {e}")))?
}

impl fmt::Display for CheckReport {
    /// What `plugin check` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "plugin {} {} ({}): loaded in {:.0} ms ({:?}), instantiated in {:.2} ms, init {:.2} ms",
            m.name,
            self.version,
            m.component.display(),
            self.compile.0.as_secs_f64() * 1e3,
            self.compile.1,
            self.instantiate.as_secs_f64() * 1e3,
            self.init.as_secs_f64() * 1e3,
        )?;
        writeln!(
            f,
            "  declares indices {:?}, tables {:?} (within the manifest's capabilities)",
            self.indices, self.tables
        )?;
        let Some(results) = &self.fixtures else {
            return writeln!(
                f,
                "  no fixtures: add `fixtures = \"fixtures\"` to the manifest and golden files to that directory"
            );
        };
        let limits = m.limits;
        let percent = |fuel: u64| fuel as f64 * 100.0 / limits.fuel.max(1) as f64;
        for r in results {
            match &r.failure {
                None => writeln!(
                    f,
                    "  ok    {:<32} fuel {:>12} ({:>5.2}% of limits.fuel)  memory {:>4} MiB of {}",
                    r.name,
                    r.fuel_used,
                    percent(r.fuel_used),
                    r.memory_bytes.div_ceil(1 << 20),
                    limits.memory_mb
                )?,
                Some(why) => writeln!(f, "  FAIL  {:<32} {why}", r.name)?,
            }
        }
        let max_fuel = results.iter().map(|r| r.fuel_used).max().unwrap_or(0);
        writeln!(
            f,
            "fuel: the costliest fixture used {max_fuel} ({:.2}% of limits.fuel = {}); \
             keep limits.fuel at least {FUEL_HEADROOM}x the cost of your largest real change",
            percent(max_fuel),
            limits.fuel
        )?;
        if max_fuel.saturating_mul(FUEL_HEADROOM) > limits.fuel {
            writeln!(
                f,
                "  warning: less than {FUEL_HEADROOM}x headroom; larger documents may run out of fuel. Consider limits.fuel = {}",
                max_fuel.saturating_mul(FUEL_HEADROOM)
            )?;
        }
        writeln!(
            f,
            "fixtures: {} passed, {} failed",
            results.len() - self.failed(),
            self.failed()
        )
    }
}
