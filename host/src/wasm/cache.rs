//! The on-disk cache of compiled components.
//!
//! Compiling a component takes from a fraction of a second (Rust) to ~10 s
//! (an interpreter bundled by componentize-py or componentize-js), so the
//! host compiles each component once and keeps the machine code on disk,
//! keyed by the component's content hash and the engine's compatibility
//! hash (wasmtime version, target and settings). A second start
//! deserializes instead of compiling. Entries are written to a temporary
//! file and renamed, so a crash never leaves a half-written entry; an entry
//! that fails to load is compiled again and replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled and written to the cache.
    Miss,
    /// Compiled; no cache is configured or writing it failed.
    Uncached,
}

/// The compile cache.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` (created on first write), or none.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    /// The entry path for a component with `content_hash`.
    pub fn entry(&self, content_hash: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{content_hash}-{}.cwasm", self.engine_key)))
    }

    /// Load the compiled component for `bytes` (hashed as `content_hash`),
    /// compiling it on a miss. Returns how it was obtained and how long it took.
    ///
    /// # Errors
    ///
    /// Fails only when the component does not compile.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome, Duration)> {
        let started = Instant::now();
        if let Some(path) = self.entry(content_hash).filter(|p| p.exists()) {
            {
                // SAFETY: the file was produced by `Component::serialize` of an
                // engine with the same compatibility hash (it is in the file
                // name), written atomically by this cache. wasmtime still checks
                // the header and refuses a mismatched or corrupt file.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(c) => return Ok((c, CacheOutcome::Hit, started.elapsed())),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "compile cache entry unusable; recompiling")
                    }
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        let outcome = match self.entry(content_hash) {
            Some(path) => match write_atomically(&path, &component.serialize()?) {
                Ok(()) => CacheOutcome::Miss,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache entry; the next start compiles again");
                    CacheOutcome::Uncached
                }
            },
            None => CacheOutcome::Uncached,
        };
        Ok((component, outcome, started.elapsed()))
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
