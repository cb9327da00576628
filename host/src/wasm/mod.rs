//! Running plugins: one engine, compiled components cached on disk, and
//! instances that run every call under fuel, a wall-clock deadline and a
//! memory cap.
//!
//! - [`Runtime`] owns the [`wasmtime::Engine`] (one per process), the linker
//!   (the `host` imports and a sandboxed WASI, see [`sandbox`]), the
//!   [`cache::CompileCache`] and the epoch ticker that turns `timeout_ms`
//!   into an interrupt.
//! - [`Runtime::load`] turns a manifest into a [`Plugin`]: read, hash,
//!   compile (or load from cache), link, instantiate once, call `init`,
//!   and check the declaration against the manifest's capabilities.
//! - [`Processor`] runs changes through a plugin. A trap of any kind fails
//!   only that change, with a precise [`ErrorKind`]; the instance is then
//!   dropped and a fresh one (instantiated and `init`-ed) serves the next
//!   change.
//!
//! Calls are synchronous and CPU-bound: callers run them on blocking threads
//! (`tokio::task::spawn_blocking`), never on the async runtime's workers.
//! Compiling is also slow (up to seconds) and runs there too.

pub mod cache;
pub mod check;
pub mod sandbox;

use crate::action::{self, Action, Cell, PluginInfo};
use crate::change::Change;
use crate::errors::ErrorKind;
use crate::manifest::Manifest;
use cache::{CacheOutcome, CompileCache};
use check::Declared;
use sandbox::{GuestLevel, GuestLog, GuestOutput, MemoryLimiter};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Generated host bindings of `wit/processor.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "processor",
        imports: { "pillowtop:processor/host.lookup": trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::pillowtop::processor::{host as wit_host, types as wit};

/// How often the epoch advances; `timeout_ms` is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Read-only data plugins may look up (granted per resource in the manifest).
pub trait Lookups: Send + Sync {
    /// The value for `key` in `resource`, if any.
    fn get(&self, resource: &str, key: &str) -> Option<String>;
}

/// In-memory lookups: resource -> key -> value.
#[derive(Debug, Default, Clone)]
pub struct MemoryLookups(pub HashMap<String, HashMap<String, String>>);

impl Lookups for MemoryLookups {
    fn get(&self, resource: &str, key: &str) -> Option<String> {
        self.0.get(resource)?.get(key).cloned()
    }
}

/// Runtime settings.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Compile cache directory; `None` disables the cache.
    pub compile_cache_dir: Option<PathBuf>,
    /// Guest log lines per second per plugin.
    pub guest_log_lines_per_second: u32,
    /// Data behind the `lookup` import.
    pub lookups: Arc<dyn Lookups>,
    /// Enforce `limits.fuel`. Always on in the host; off only to measure
    /// what fuel metering costs (`make bench`).
    pub meter_fuel: bool,
    /// Write `/tmp/perf-<pid>.map` so `perf report` can name the compiled
    /// plugin functions it samples (for profiling plugins; `make bench`
    /// turns it on with `BENCH_PERFMAP=1`).
    pub perf_map: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            compile_cache_dir: None,
            guest_log_lines_per_second: 100,
            lookups: Arc::new(MemoryLookups::default()),
            meter_fuel: true,
            perf_map: false,
        }
    }
}

/// Why a plugin could not be loaded. The running version (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error(
        "plugin {plugin}: cannot read component {path}: {source}; build it with `make plugins` or fix `component` in the manifest"
    )]
    Read {
        /// Plugin name.
        plugin: String,
        /// Component path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or it does not compile.
    #[error("plugin {plugin}: {path} is not a valid WebAssembly component: {message}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// Component path.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// The component imports something the host does not provide, or does
    /// not export the processor world.
    #[error("plugin {plugin}: component does not fit the pillowtop:processor world: {message}")]
    Link {
        /// Plugin name.
        plugin: String,
        /// wasmtime's reason.
        message: String,
    },
    /// `init` failed: it returned an error, trapped, or declared something invalid.
    #[error("plugin {plugin}: init failed: {message}")]
    Init {
        /// Plugin name.
        plugin: String,
        /// What went wrong; fix the manifest's `[config]` or the plugin.
        message: String,
    },
}

/// A plugin's identity in status, metrics and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersion {
    /// Manifest `version`.
    pub version: String,
    /// First 12 hex digits of SHA-256 over the component and the manifest
    /// (so a config change is a new version).
    pub hash: String,
}

impl std::fmt::Display for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.version, self.hash)
    }
}

/// The version of a plugin from its files, without compiling it.
///
/// # Errors
///
/// Fails when the component cannot be read.
pub fn plugin_version(manifest: &Manifest) -> std::io::Result<PluginVersion> {
    let bytes = std::fs::read(&manifest.component)?;
    Ok(version_of(manifest, &bytes))
}

fn version_of(manifest: &Manifest, component: &[u8]) -> PluginVersion {
    let mut h = Sha256::new();
    h.update(component);
    h.update(manifest.config_json.as_bytes());
    h.update(
        format!(
            "{:?}{:?}{:?}",
            manifest.limits, manifest.subscription, manifest.capabilities
        )
        .as_bytes(),
    );
    let hex = hex(&h.finalize());
    PluginVersion {
        version: manifest.version.clone(),
        hash: hex[..12].to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The engine, linker and compile cache shared by every plugin of a process.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: CompileCache,
    options: RuntimeOptions,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Timings of a load, for `status` and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct LoadTimings {
    /// Compile or cache load time.
    pub compile: Duration,
    /// Whether the cache served it.
    pub cache: CacheOutcome,
    /// First instantiation.
    pub instantiate: Duration,
    /// First `init` call.
    pub init: Duration,
}

impl Runtime {
    /// Create the engine, linker and epoch ticker.
    ///
    /// # Errors
    ///
    /// Fails when the engine or linker cannot be set up (a wasmtime build problem).
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Fuel makes a call's cost deterministic; the epoch bounds wall time
        // (fuel cannot see time spent in host calls).
        config.consume_fuel(options.meter_fuel);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Processor::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("pillowtop-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?;
        }
        let cache = CompileCache::new(&engine, options.compile_cache_dir.clone());
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            options,
            ticker_stop,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load, compile (or fetch from cache), link, instantiate and `init` a plugin.
    ///
    /// Slow on a cache miss (compilation): call from a blocking thread.
    ///
    /// # Errors
    ///
    /// See [`LoadError`].
    pub fn load(&self, manifest: &Manifest) -> Result<(Processor, LoadTimings), LoadError> {
        let name = manifest.name.clone();
        let bytes = std::fs::read(&manifest.component).map_err(|source| LoadError::Read {
            plugin: name.clone(),
            path: manifest.component.clone(),
            source,
        })?;
        let content_hash = hex(&Sha256::digest(&bytes));
        let (component, cache, compile) = self
            .cache
            .load(&self.engine, &bytes, &content_hash)
            .map_err(|e| LoadError::Compile {
                plugin: name.clone(),
                path: manifest.component.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                plugin: name.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = bindings::ProcessorPre::new(pre).map_err(|e| LoadError::Link {
            plugin: name.clone(),
            message: format!("{e:#}"),
        })?;
        let version = version_of(manifest, &bytes);
        let log = Arc::new(GuestLog::new(
            format!("{}@{}", manifest.name, version),
            self.options.guest_log_lines_per_second,
        ));
        let mut plugin = Plugin {
            manifest: manifest.clone(),
            version,
            pre,
            engine: self.engine.clone(),
            log,
            lookups: self.options.lookups.clone(),
            info: PluginInfo::default(),
            declared: Declared::default(),
        };
        let started = Instant::now();
        let mut instance = plugin.instantiate().map_err(|e| LoadError::Init {
            plugin: name.clone(),
            message: e.message,
        })?;
        let instantiate = started.elapsed();
        let started = Instant::now();
        let info = instance.init(&plugin).map_err(|e| LoadError::Init {
            plugin: name.clone(),
            message: e.message,
        })?;
        let init = started.elapsed();
        let declared = check::check_info(&info, manifest).map_err(|message| LoadError::Init {
            plugin: name.clone(),
            message,
        })?;
        plugin.info = info;
        plugin.declared = declared;
        let processor = Processor {
            plugin: Arc::new(plugin),
            instance: Some(instance),
            last_fuel_used: 0,
        };
        Ok((
            processor,
            LoadTimings {
                compile,
                cache,
                instantiate,
                init,
            },
        ))
    }
}

/// A loaded, checked plugin: everything needed to make instances.
pub struct Plugin {
    manifest: Manifest,
    version: PluginVersion,
    pre: bindings::ProcessorPre<HostState>,
    engine: Engine,
    log: Arc<GuestLog>,
    lookups: Arc<dyn Lookups>,
    info: PluginInfo,
    declared: Declared,
}

impl Plugin {
    /// The manifest it was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its version.
    pub fn version(&self) -> &PluginVersion {
        &self.version
    }

    /// What its `init` declared.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn instantiate(&self) -> Result<Instance, Failure> {
        let limits = self.manifest.limits;
        let output = GuestOutput::new(self.log.clone());
        let state = HostState {
            wasi: sandbox::wasi_ctx(&output),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap_bytes: limits.memory_mb as usize * 1024 * 1024,
                hit: false,
                peak_bytes: 0,
            },
            output,
            log: self.log.clone(),
            lookups: self.lookups.clone(),
            granted_lookups: self.manifest.capabilities.lookups.clone(),
            violation: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        arm(&mut store, limits.fuel, limits.timeout_ms);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, &mut store, "instantiation"))?;
        Ok(Instance { store, bindings })
    }
}

/// Give the store a fresh fuel budget and deadline for one call.
fn arm(store: &mut Store<HostState>, fuel: u64, timeout_ms: u64) {
    // Fails only on an engine built without fuel metering (benchmarks).
    let _ = store.set_fuel(fuel);
    store.set_epoch_deadline(timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
    let data = store.data_mut();
    data.limiter.hit = false;
    data.violation = None;
    data.output.start_call();
}

/// One live instance and its store.
struct Instance {
    store: Store<HostState>,
    bindings: bindings::Processor,
}

impl Instance {
    fn init(&mut self, plugin: &Plugin) -> Result<PluginInfo, Failure> {
        let limits = plugin.manifest.limits;
        arm(&mut self.store, limits.fuel, limits.timeout_ms);
        match self
            .bindings
            .call_init(&mut self.store, &plugin.manifest.config_json)
        {
            Ok(Ok(info)) => Ok(convert_info(info)),
            Ok(Err(message)) => Err(Failure {
                kind: ErrorKind::Instantiate,
                message: format!("init returned an error: {message}"),
            }),
            Err(e) => Err(classify(&e, &mut self.store, "init")),
        }
    }
}

/// Why one change failed in one processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind, for the pillow error and metrics.
    pub kind: ErrorKind,
    /// What happened, precisely.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Map a call error to an error kind, using what the store saw.
fn classify(error: &wasmtime::Error, store: &mut Store<HostState>, during: &str) -> Failure {
    let data = store.data_mut();
    let limits_hit = data.limiter.hit;
    let violation = data.violation.take();
    let stderr = data.output.stderr_tail();
    let with_stderr = |m: String| {
        if stderr.is_empty() {
            m
        } else {
            format!("{m}; plugin stderr: {stderr}")
        }
    };
    if let Some(v) = violation {
        return Failure {
            kind: ErrorKind::Capability,
            message: v,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure {
            kind: ErrorKind::Fuel,
            message: format!(
                "{during} ran out of fuel (limits.fuel); raise the budget if the work is legitimate"
            ),
        },
        Some(Trap::Interrupt) => Failure {
            kind: ErrorKind::Timeout,
            message: format!("{during} exceeded its wall-clock deadline (limits.timeout_ms)"),
        },
        _ if limits_hit => Failure {
            kind: ErrorKind::Memory,
            message: with_stderr(format!(
                "{during} tried to grow memory past limits.memory_mb and trapped"
            )),
        },
        Some(trap) => Failure {
            kind: ErrorKind::Trap,
            message: with_stderr(format!("{during} trapped: {trap}")),
        },
        None => Failure {
            kind: ErrorKind::Trap,
            message: with_stderr(format!("{during} failed: {error:#}")),
        },
    }
}

/// Runs changes through one plugin, replacing its instance after a trap.
pub struct Processor {
    plugin: Arc<Plugin>,
    instance: Option<Instance>,
    last_fuel_used: u64,
}

impl Processor {
    /// A processor for a loaded plugin; its first call makes an instance
    /// (instantiate + `init`, tens of microseconds from a loaded plugin).
    pub fn new(plugin: Arc<Plugin>) -> Processor {
        Processor {
            plugin,
            instance: None,
            last_fuel_used: 0,
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Fuel the last call used.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// Peak linear memory of the current instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.instance
            .as_ref()
            .map_or(0, |i| i.store.data().limiter.peak_bytes)
    }

    /// Whether this change is for this processor (manifest subscription).
    pub fn wants(&self, change: &Change) -> bool {
        self.plugin.manifest.subscription.matches(
            &change.topic,
            change.document_type.as_deref(),
            change.domain.as_deref(),
        )
    }

    /// Make a fresh instance now (as after a trap). For benchmarks and tests
    /// of instantiation cost.
    ///
    /// # Errors
    ///
    /// When instantiation or `init` fails.
    pub fn reinstantiate(&mut self) -> Result<(), Failure> {
        self.instance = None;
        self.instance = Some(self.fresh_instance()?);
        Ok(())
    }

    /// A new, initialised instance. Any failure is of kind `instantiate`:
    /// the plugin loaded and ran `init` before, so this one is broken.
    fn fresh_instance(&self) -> Result<Instance, Failure> {
        let fresh = self
            .plugin
            .instantiate()
            .and_then(|mut i| i.init(&self.plugin).map(|_| i));
        fresh.map_err(|f| Failure {
            kind: ErrorKind::Instantiate,
            message: format!(
                "a fresh instance could not be started ({}): {}",
                f.kind, f.message
            ),
        })
    }

    /// Run one change. On a trap the instance is dropped; the next call
    /// gets a fresh one.
    ///
    /// # Errors
    ///
    /// A [`Failure`] with the precise kind; the change should become a pillow error.
    pub fn process(&mut self, change: &Change) -> Result<Vec<Action>, Failure> {
        if self.instance.is_none() {
            self.instance = Some(self.fresh_instance()?);
        }
        let Some(instance) = self.instance.as_mut() else {
            unreachable!("instance was just created")
        };
        let limits = self.plugin.manifest.limits;
        arm(&mut instance.store, limits.fuel, limits.timeout_ms);
        let param = wit::Change {
            id: &change.id,
            topic: &change.topic,
            partition: change.partition,
            offset: change.offset,
            domain: change.domain.as_deref(),
            document_type: change.document_type.as_deref(),
            document_subtype: change.document_subtype.as_deref(),
            is_deletion: change.is_deletion,
            publish_time_ms: change.publish_time_ms,
            attempts: change.attempts,
            document: change.document.as_deref(),
        };
        let result = instance
            .bindings
            .call_process_change(&mut instance.store, param);
        self.last_fuel_used = limits
            .fuel
            .saturating_sub(instance.store.get_fuel().unwrap_or(0));
        match result {
            Ok(Ok(actions)) => {
                if let Some(v) = instance.store.data_mut().violation.take() {
                    // The plugin asked for an ungranted lookup and carried on.
                    return Err(Failure {
                        kind: ErrorKind::Capability,
                        message: v,
                    });
                }
                let actions: Vec<Action> = actions.into_iter().map(convert_action).collect();
                check::check_actions(&self.plugin.declared, &actions).map_err(|e| Failure {
                    kind: e.kind,
                    message: e.message,
                })?;
                Ok(actions)
            }
            Ok(Err(wit::ProcessError::Retryable(m))) => Err(Failure {
                kind: ErrorKind::Retryable,
                message: m,
            }),
            Ok(Err(wit::ProcessError::Permanent(m))) => Err(Failure {
                kind: ErrorKind::Permanent,
                message: m,
            }),
            Err(e) => {
                let failure = classify(&e, &mut instance.store, "process-change");
                // A trapped instance's state is unknown: never reuse it.
                self.instance = None;
                Err(failure)
            }
        }
    }
}

fn convert_info(info: wit::PluginInfo) -> PluginInfo {
    PluginInfo {
        tables: info
            .tables
            .into_iter()
            .map(|t| action::TableSpec {
                name: t.name,
                columns: t
                    .columns
                    .into_iter()
                    .map(|c| action::Column {
                        name: c.name,
                        nullable: c.nullable,
                        kind: match c.kind {
                            wit::ColumnType::Text => action::ColumnType::Text,
                            wit::ColumnType::Integer => action::ColumnType::Integer,
                            wit::ColumnType::Float => action::ColumnType::Float,
                            wit::ColumnType::Boolean => action::ColumnType::Boolean,
                            wit::ColumnType::Date => action::ColumnType::Date,
                            wit::ColumnType::Timestamp => action::ColumnType::Timestamp,
                            wit::ColumnType::Json => action::ColumnType::Json,
                        },
                    })
                    .collect(),
                primary_key: t.primary_key,
            })
            .collect(),
        indices: info
            .indices
            .into_iter()
            .map(|i| action::IndexSpec {
                name: i.name,
                mappings: i.mappings,
            })
            .collect(),
    }
}

fn convert_action(a: wit::Action) -> Action {
    match a {
        wit::Action::IndexDocument(d) => Action::IndexDocument {
            index: d.index,
            id: d.id,
            document: d.document,
        },
        wit::Action::DeleteDocument(d) => Action::DeleteDocument {
            index: d.index,
            id: d.id,
        },
        wit::Action::UpsertRows(u) => Action::UpsertRows {
            table: u.table,
            rows: u
                .rows
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|v| match v {
                            wit::Value::Null => Cell::Null,
                            wit::Value::Boolean(b) => Cell::Boolean(b),
                            wit::Value::Integer(i) => Cell::Integer(i),
                            wit::Value::Float(f) => Cell::Float(f),
                            wit::Value::Text(t) => Cell::Text(t),
                        })
                        .collect()
                })
                .collect(),
        },
        wit::Action::DeleteRows(d) => Action::DeleteRows {
            table: d.table,
            doc_id: d.doc_id,
        },
    }
}

/// Per-store host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    output: GuestOutput,
    log: Arc<GuestLog>,
    lookups: Arc<dyn Lookups>,
    granted_lookups: Vec<String>,
    /// Set when the plugin used something it was not granted.
    violation: Option<String>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Marker error: a capability violation inside a host import (traps the call).
#[derive(Debug)]
struct CapabilityViolation;

impl std::fmt::Display for CapabilityViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("capability violation")
    }
}

impl std::error::Error for CapabilityViolation {}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let level = match level {
            wit_host::Level::Trace => GuestLevel::Trace,
            wit_host::Level::Debug => GuestLevel::Debug,
            wit_host::Level::Info => GuestLevel::Info,
            wit_host::Level::Warn => GuestLevel::Warn,
            wit_host::Level::Error => GuestLevel::Error,
        };
        self.log.line(level, "log", &message);
    }

    fn lookup(&mut self, resource: String, key: String) -> wasmtime::Result<Option<String>> {
        if !self.granted_lookups.contains(&resource) {
            self.violation = Some(format!(
                "lookup of resource {resource:?}, which the manifest does not grant (capabilities.lookups = {:?})",
                self.granted_lookups
            ));
            return Err(wasmtime::Error::new(CapabilityViolation));
        }
        Ok(self.lookups.get(&resource, &key))
    }
}

impl wit::Host for HostState {}
