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
//! What bounds a call: fuel (`limits.fuel`), the epoch deadline
//! (`limits.timeout_ms`; WASI clocks and polls never wait, see
//! [`overrides`], so no host call can outlast it), linear memory
//! (`limits.memory_mb`) and the data the host copies out of the guest
//! (`limits.output_mb`: wasmtime's per-call "hostcall fuel", charged while
//! the results are lifted, so an oversized output fails before the host
//! holds it). [`calls`] knows which calls run, for a process stopping past
//! its grace period.
//!
//! Calls are synchronous and CPU-bound: callers run them on blocking threads
//! (`tokio::task::spawn_blocking`), never on the async runtime's workers.
//! Compiling is also slow (up to seconds) and runs there too.

pub mod cache;
pub mod calls;
pub mod check;
pub mod epoch;
mod imports;
mod overrides;
pub mod sandbox;

use crate::action::{self, Action, Cell, PluginInfo};
use crate::change::Change;
use crate::errors::{Backoff, ErrorKind, ProcessorRef, cut_message};
use crate::lookup::{Lookups, MemoryLookups};
use crate::manifest::{Limits, Manifest};
use cache::{CacheOutcome, CompileCache};
use calls::{CallInProgress, CallSlot, Calls};
use check::Declared;
use epoch::{EPOCH_TICK, Ticker};
pub use imports::HostState;
use sandbox::{GuestLog, GuestOutput, MemoryLimiter};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};

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

use bindings::pillowtop::processor::types as wit;

/// Runtime settings.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Compile cache directory; `None` disables the cache.
    pub compile_cache_dir: Option<PathBuf>,
    /// Largest component file loaded, in bytes (`runtime.max_component_mb`).
    pub max_component_bytes: u64,
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

impl RuntimeOptions {
    /// The options a host config's `[runtime]` asks for.
    pub fn from_config(config: &crate::config::RuntimeConfig) -> RuntimeOptions {
        RuntimeOptions {
            compile_cache_dir: Some(config.compile_cache_dir.clone()),
            max_component_bytes: config.max_component_bytes(),
            guest_log_lines_per_second: config.guest_log_lines_per_second,
            ..RuntimeOptions::default()
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            compile_cache_dir: None,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            guest_log_lines_per_second: 100,
            lookups: Arc::new(MemoryLookups::default()),
            meter_fuel: true,
            perf_map: false,
        }
    }
}

/// The default of `runtime.max_component_mb`: 256 MiB, ten times the
/// largest component a toolchain here produces (componentize-py, ~18 MB).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Why a plugin could not be loaded. The running version (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read: missing, not a regular
    /// file, or over `runtime.max_component_mb`.
    #[error(
        "plugin {plugin}: cannot read component {path}: {source}; build it with `make plugins` or fix `component` in the manifest"
    )]
    Read {
        /// Plugin name.
        plugin: String,
        /// Component path.
        path: PathBuf,
        /// Why.
        source: crate::file::ReadError,
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
/// Fails when the component cannot be read, is not a regular file or is
/// larger than `max_component_bytes`.
pub fn plugin_version(
    manifest: &Manifest,
    max_component_bytes: u64,
) -> Result<PluginVersion, crate::file::ReadError> {
    let bytes = read_component(&manifest.component, max_component_bytes)?;
    Ok(version_of(manifest, &bytes))
}

fn read_component(path: &std::path::Path, max: u64) -> Result<Vec<u8>, crate::file::ReadError> {
    crate::file::read_bounded(path, max, "runtime.max_component_mb")
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
    ticker: Arc<Ticker>,
    calls: Arc<Calls>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
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
        // Clocks, polls and random numbers are replaced (see `overrides`).
        linker.allow_shadowing(true);
        overrides::add_to_linker(&mut linker)?;
        linker.allow_shadowing(false);
        bindings::Processor::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        let ticker = Ticker::start(engine.clone())?;
        let cache = CompileCache::new(&engine, options.compile_cache_dir.clone());
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            options,
            calls: Arc::new(Calls::with_ticker(ticker.clone())),
            ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The largest component file this runtime loads, in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.options.max_component_bytes
    }

    /// Plugin calls running right now (for a process stopping past its
    /// grace period), longest first.
    pub fn calls_in_progress(&self) -> Vec<CallInProgress> {
        self.calls.in_progress()
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
        let bytes = read_component(&manifest.component, self.options.max_component_bytes).map_err(
            |source| LoadError::Read {
                plugin: name.clone(),
                path: manifest.component.clone(),
                source,
            },
        )?;
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
        let label: Arc<str> = Arc::from(format!("{}@{}", manifest.name, version));
        let mut plugin = Plugin {
            manifest: manifest.clone(),
            version,
            label,
            pre,
            engine: self.engine.clone(),
            log,
            lookups: self.options.lookups.clone(),
            calls: self.calls.clone(),
            info: PluginInfo::default(),
            declared: Declared::default(),
        };
        let slot = plugin.calls.slot(plugin.label.clone());
        let started = Instant::now();
        slot.begin_init();
        let mut instance = plugin.instantiate().map_err(|e| LoadError::Init {
            plugin: name.clone(),
            message: e.message,
        });
        let instantiate = started.elapsed();
        let started = Instant::now();
        let info = match &mut instance {
            Ok(instance) => instance.init(&plugin).map_err(|e| LoadError::Init {
                plugin: name.clone(),
                message: e.message,
            }),
            Err(_) => Ok(PluginInfo::default()),
        };
        slot.end();
        let instance = instance?;
        let info = info?;
        let init = started.elapsed();
        let declared = check::check_info(&info, manifest).map_err(|message| LoadError::Init {
            plugin: name.clone(),
            message,
        })?;
        plugin.info = info;
        plugin.declared = declared;
        let processor = Processor {
            lookups: plugin.lookups.clone(),
            plugin: Arc::new(plugin),
            instance: Some(instance),
            last_fuel_used: 0,
            last_output_bytes: 0,
            slot,
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
    /// `name@version+hash`, for logs and the calls registry.
    label: Arc<str>,
    pre: bindings::ProcessorPre<HostState>,
    engine: Engine,
    log: Arc<GuestLog>,
    lookups: Arc<dyn Lookups>,
    calls: Arc<Calls>,
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
            random: overrides::CallRandom::default(),
            output_budget_bytes: limits.output_bytes(),
            deadline: Instant::now(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        // Every string and list the guest hands the host (results, log
        // lines, lookup keys) is charged against this while it is lifted.
        store.set_hostcall_fuel(limits.output_bytes());
        arm(&mut store, &limits, overrides::INIT_SEED);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, &mut store, "instantiation"))?;
        Ok(Instance { store, bindings })
    }
}

/// Give the store a fresh fuel budget, deadline and random seed for one call.
fn arm(store: &mut Store<HostState>, limits: &Limits, seed: u64) {
    // Fails only on an engine built without fuel metering (benchmarks).
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
    let data = store.data_mut();
    data.limiter.hit = false;
    data.violation = None;
    data.deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    data.random.reseed(seed);
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
        arm(&mut self.store, &limits, overrides::INIT_SEED);
        match self
            .bindings
            .call_init(&mut self.store, &plugin.manifest.config_json)
        {
            Ok(Ok(info)) => Ok(convert_info(info)),
            Ok(Err(message)) => Err(Failure {
                kind: ErrorKind::Instantiate,
                message: cut_message(format!("init returned an error: {message}")),
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

/// What wasmtime says when a call's data copied out of the guest exceeds
/// the store's hostcall fuel (its error type is private, so the text is the
/// only handle; the sandbox tests of aliased and oversized outputs fail if
/// a wasmtime upgrade changes it).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Whether `error` is wasmtime's refusal to copy more than the hostcall fuel.
fn is_output_over_budget(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|e| e.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
}

/// Map a call error to an error kind, using what the store saw.
fn classify(error: &wasmtime::Error, store: &mut Store<HostState>, during: &str) -> Failure {
    let data = store.data_mut();
    let limits_hit = data.limiter.hit;
    let violation = data.violation.take();
    let budget = data.output_budget_bytes;
    let stderr = data.output.stderr_tail();
    let with_stderr = |m: String| {
        if stderr.is_empty() {
            m
        } else {
            format!("{m}; plugin stderr: {stderr}")
        }
    };
    if let Some((kind, message)) = violation {
        return Failure { kind, message };
    }
    if is_output_over_budget(error) {
        return Failure {
            kind: ErrorKind::Output,
            message: format!(
                "{during} handed the host more than limits.output_mb allows ({budget} bytes, counted over every string and row of its result as the host copies it); return less per call or raise limits.output_mb"
            ),
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
    /// What the `lookup` import reads: the runtime's resources, or a
    /// fixture's data.
    lookups: Arc<dyn Lookups>,
    instance: Option<Instance>,
    last_fuel_used: u64,
    last_output_bytes: usize,
    slot: CallSlot,
}

impl Processor {
    /// A processor for a loaded plugin; its first call makes an instance
    /// (instantiate + `init`, tens of microseconds from a loaded plugin).
    pub fn new(plugin: Arc<Plugin>) -> Processor {
        let slot = plugin.calls.slot(plugin.label.clone());
        Processor {
            lookups: plugin.lookups.clone(),
            plugin,
            instance: None,
            last_fuel_used: 0,
            last_output_bytes: 0,
            slot,
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// This processor as pillow errors name it: plugin name, version and
    /// its manifest's retry schedule.
    pub fn reference(&self) -> ProcessorRef {
        let plugin = &self.plugin;
        ProcessorRef {
            name: plugin.manifest().name.clone(),
            version: plugin.version().to_string(),
            backoff: Backoff::from(&plugin.manifest().retry),
        }
    }

    /// Serve this processor's lookups from `lookups` from the next call
    /// on (fixtures give their own data).
    pub fn set_lookups(&mut self, lookups: Arc<dyn Lookups>) {
        self.lookups = lookups;
    }

    /// Serve its lookups from the runtime's resources again.
    pub fn reset_lookups(&mut self) {
        self.lookups = self.plugin.lookups.clone();
    }

    /// Fuel the last call used.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// Bytes the host holds for the last call's actions (their strings
    /// and row cells), counted while converting them.
    pub fn last_output_bytes(&self) -> usize {
        self.last_output_bytes
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
        self.slot.begin_change(change);
        let result = self.process_marked(change);
        self.slot.end();
        result
    }

    fn process_marked(&mut self, change: &Change) -> Result<Vec<Action>, Failure> {
        self.last_output_bytes = 0;
        if self.instance.is_none() {
            self.instance = Some(self.fresh_instance()?);
        }
        let Some(instance) = self.instance.as_mut() else {
            unreachable!("instance was just created")
        };
        let limits = self.plugin.manifest.limits;
        let seed = overrides::change_seed(&change.topic, change.partition, change.offset);
        arm(&mut instance.store, &limits, seed);
        let data = instance.store.data_mut();
        if !Arc::ptr_eq(&data.lookups, &self.lookups) {
            data.lookups = self.lookups.clone();
        }
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
            processing_time_ms: change.processing_time_ms,
            document: change.document(),
        };
        let result = instance
            .bindings
            .call_process_change(&mut instance.store, param);
        self.last_fuel_used = limits
            .fuel
            .saturating_sub(instance.store.get_fuel().unwrap_or(0));
        if result.is_ok()
            && let Some((kind, message)) = instance.store.data_mut().violation.take()
        {
            // The plugin was refused something (an ungranted lookup, one
            // that could not answer, a host call past its deadline) and
            // returned: the refusal decides, not what it made of it.
            return Err(Failure { kind, message });
        }
        match result {
            Ok(Ok(actions)) => {
                let mut bytes = 0;
                let actions: Vec<Action> = actions
                    .into_iter()
                    .map(|a| convert_action(a, &mut bytes))
                    .collect();
                self.last_output_bytes = bytes;
                check::check_actions(&self.plugin.declared, &actions).map_err(|e| Failure {
                    kind: e.kind,
                    message: e.message,
                })?;
                Ok(actions)
            }
            // A plugin's own message is cut (as its log lines are) before
            // it reaches the store, the log or `status`.
            Ok(Err(wit::ProcessError::Retryable(m))) => Err(Failure {
                kind: ErrorKind::Retryable,
                message: cut_message(m),
            }),
            Ok(Err(wit::ProcessError::Permanent(m))) => Err(Failure {
                kind: ErrorKind::Permanent,
                message: cut_message(m),
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
                version_column: t.version_column,
                definition: t.definition,
            })
            .collect(),
        indices: info
            .indices
            .into_iter()
            .map(|i| action::IndexSpec {
                name: i.name,
                mappings: i.mappings,
                aliases: i.aliases,
            })
            .collect(),
    }
}

/// Convert one action by move, adding the bytes the host now holds for it
/// (strings and row cells) to `bytes`.
fn convert_action(a: wit::Action, bytes: &mut usize) -> Action {
    const CELL: usize = std::mem::size_of::<Cell>();
    *bytes += std::mem::size_of::<Action>();
    match a {
        wit::Action::IndexDocument(d) => {
            *bytes += d.index.len() + d.id.len() + d.document.len();
            Action::IndexDocument {
                index: d.index,
                id: d.id,
                document: d.document,
            }
        }
        wit::Action::CreateDocument(d) => {
            *bytes += d.index.len() + d.id.len() + d.document.len();
            Action::CreateDocument {
                index: d.index,
                id: d.id,
                document: d.document,
            }
        }
        wit::Action::DeleteDocument(d) => {
            *bytes += d.index.len() + d.id.len();
            Action::DeleteDocument {
                index: d.index,
                id: d.id,
            }
        }
        wit::Action::UpsertRows(u) => {
            *bytes += u.table.len();
            Action::UpsertRows {
                table: u.table,
                rows: u
                    .rows
                    .into_iter()
                    .map(|row| {
                        *bytes += row.len() * CELL;
                        row.into_iter()
                            .map(|v| match v {
                                wit::Value::Null => Cell::Null,
                                wit::Value::Boolean(b) => Cell::Boolean(b),
                                wit::Value::Integer(i) => Cell::Integer(i),
                                wit::Value::Float(f) => Cell::Float(f),
                                wit::Value::Text(t) => {
                                    *bytes += t.len();
                                    Cell::Text(t)
                                }
                            })
                            .collect()
                    })
                    .collect(),
            }
        }
        wit::Action::DeleteRows(d) => {
            *bytes += d.table.len() + d.doc_id.len();
            Action::DeleteRows {
                table: d.table,
                doc_id: d.doc_id,
            }
        }
    }
}
