//! The host side of the WIT `host` interface: each store's state, and
//! the `log` and `lookup` imports a plugin calls. A refusal is recorded
//! in the state (it decides the call's error kind) and, for `lookup`,
//! handed to the plugin as an error value.

use super::bindings::pillowtop::processor::{host as wit_host, types as wit};
use super::overrides;
use super::sandbox::{GuestLevel, GuestLog, GuestOutput, MemoryLimiter};
use crate::errors::ErrorKind;
use crate::lookup::{LookupError, Lookups};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Per-store host state.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) output: GuestOutput,
    pub(super) log: Arc<GuestLog>,
    pub(super) lookups: Arc<dyn Lookups>,
    pub(super) granted_lookups: Vec<String>,
    /// Set when a host call refused the plugin something (an ungranted
    /// lookup, a wait, too much data, its deadline passed): the error kind
    /// and what happened. It fails the call even if the plugin carries on.
    pub(super) violation: Option<(ErrorKind, String)>,
    /// The call's random sources (seeded per call, see `overrides`).
    pub(super) random: overrides::CallRandom,
    /// `limits.output_mb` in bytes.
    pub(super) output_budget_bytes: usize,
    /// When the current call's `limits.timeout_ms` runs out. Epoch
    /// interruption enforces it inside Wasm; host calls that could take
    /// time check it themselves.
    pub(super) deadline: Instant,
}

impl HostState {
    /// Refuse the current host call: record why (it fails the call with
    /// `kind`) and trap.
    pub(super) fn violate<T>(&mut self, kind: ErrorKind, message: String) -> wasmtime::Result<T> {
        self.violation = Some((kind, message));
        Err(wasmtime::Error::new(CapabilityViolation))
    }

    /// Record that the call fails with `kind` (the first such reason
    /// wins) while letting the plugin carry on with an error value.
    fn refuse(&mut self, kind: ErrorKind, message: String) {
        self.violation.get_or_insert((kind, message));
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Marker error: a host import refused the call (traps it; the reason is
/// in [`HostState`]'s `violation`).
#[derive(Debug)]
struct CapabilityViolation;

impl std::fmt::Display for CapabilityViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by the sandbox")
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

    fn lookup(
        &mut self,
        resource: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, wit_host::LookupError>> {
        // The plugin gets an error value, never data, and the change
        // fails with the first refusal whatever the plugin makes of it.
        if !self.granted_lookups.contains(&resource) {
            let message = format!(
                "lookup of resource {resource:?}, which the manifest does not grant (capabilities.lookups = {:?})",
                self.granted_lookups
            );
            self.refuse(ErrorKind::Capability, message.clone());
            return Ok(Err(wit_host::LookupError::NotGranted(message)));
        }
        // A lookup may wait on a database: it must not start once the
        // call's time is up, whatever the epoch says.
        let answer = if Instant::now() >= self.deadline {
            Err(LookupError::Timeout { resource })
        } else {
            self.lookups.get(&resource, &key, self.deadline)
        };
        Ok(answer.map_err(|e| {
            let message = format!("lookup of key {:.100?}: {e}", key);
            self.refuse(e.kind(), message.clone());
            wit_host::LookupError::Unavailable(message)
        }))
    }
}

impl wit::Host for HostState {}
