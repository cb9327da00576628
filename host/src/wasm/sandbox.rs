//! The sandbox a plugin runs in: WASI with nothing real behind it, guest
//! output routed to the host log under a rate limit, and a memory limiter
//! that remembers when it said no.
//!
//! WASI is linked because every toolchain's output imports some of it
//! (stdio, clocks, random, environment). What the plugin gets:
//! - no preopened directories, so every filesystem call fails;
//! - no sockets and no name lookup;
//! - no environment variables and no arguments;
//! - clocks frozen at the Unix epoch (whose timers never wait) and random
//!   sources seeded per call from the change (both in the `overrides` module),
//!   so the same change always produces the same actions;
//! - stdout and stderr as lines in the host log, tagged with the plugin.

use crate::rate::RateLimiter;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// Most bytes of stderr kept per call to explain a trap (a panic message).
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest line logged; the rest of a longer line is cut.
const MAX_LINE_BYTES: usize = 4096;

/// Where a plugin's log lines go: shared by its stdout, stderr and the
/// `log` import, across instances of the same plugin.
#[derive(Debug)]
pub struct GuestLog {
    plugin: String,
    limiter: Mutex<RateLimiter>,
}

/// Log level of a guest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestLevel {
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warn
    Warn,
    /// error
    Error,
}

impl GuestLog {
    /// A log for `plugin` (name and version) at `lines_per_second`.
    pub fn new(plugin: String, lines_per_second: u32) -> Self {
        GuestLog {
            plugin,
            limiter: Mutex::new(RateLimiter::new(lines_per_second, Instant::now())),
        }
    }

    /// Log one line, unless over the rate.
    pub fn line(&self, level: GuestLevel, source: &'static str, message: &str) {
        let allowed = self
            .limiter
            .lock()
            .ok()
            .and_then(|mut l| l.allow(Instant::now()));
        let Some(dropped) = allowed else { return };
        let plugin = &self.plugin;
        if dropped > 0 {
            tracing::warn!(plugin, dropped, "plugin log rate limit: dropped lines");
        }
        let message = truncate(message, MAX_LINE_BYTES);
        match level {
            GuestLevel::Trace => tracing::trace!(plugin, source, "{message}"),
            GuestLevel::Debug => tracing::debug!(plugin, source, "{message}"),
            GuestLevel::Info => tracing::info!(plugin, source, "{message}"),
            GuestLevel::Warn => tracing::warn!(plugin, source, "{message}"),
            GuestLevel::Error => tracing::error!(plugin, source, "{message}"),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Per-store output state: partial lines and the stderr tail of the current call.
#[derive(Debug, Default)]
struct OutputState {
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
    stderr_tail: Vec<u8>,
}

/// The stdout/stderr of one store.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    log: Arc<GuestLog>,
    state: Arc<Mutex<OutputState>>,
}

impl GuestOutput {
    /// Output for one store, logging to `log`.
    pub fn new(log: Arc<GuestLog>) -> Self {
        GuestOutput {
            log,
            state: Arc::default(),
        }
    }

    /// Forget the stderr of earlier calls.
    pub fn start_call(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.stderr_tail.clear();
        }
    }

    /// What the plugin wrote to stderr during the current call (e.g. its
    /// panic message), trimmed.
    pub fn stderr_tail(&self) -> String {
        self.state
            .lock()
            .map(|s| String::from_utf8_lossy(&s.stderr_tail).trim().to_owned())
            .unwrap_or_default()
    }

    fn write(&self, stderr: bool, bytes: &[u8]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if stderr {
            let tail = &mut state.stderr_tail;
            tail.extend_from_slice(bytes);
            if tail.len() > STDERR_TAIL_BYTES {
                let cut = tail.len() - STDERR_TAIL_BYTES;
                tail.drain(..cut);
            }
        }
        let line = if stderr {
            &mut state.stderr_line
        } else {
            &mut state.stdout_line
        };
        for &b in bytes {
            if b == b'\n' {
                let text = String::from_utf8_lossy(line).into_owned();
                line.clear();
                let (level, source) = if stderr {
                    (GuestLevel::Warn, "stderr")
                } else {
                    (GuestLevel::Info, "stdout")
                };
                self.log.line(level, source, &text);
            } else if line.len() < MAX_LINE_BYTES {
                line.push(b);
            }
        }
    }

    fn stream(&self, stderr: bool) -> GuestStream {
        GuestStream {
            output: self.clone(),
            stderr,
        }
    }
}

/// One of a store's output streams, as WASI sees it.
struct GuestStream {
    output: GuestOutput,
    stderr: bool,
}

/// How much a guest may write per `write` call.
const WRITE_BUDGET: usize = 64 * 1024;

#[async_trait::async_trait]
impl OutputStream for GuestStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.output.write(self.stderr, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.stderr, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.output.stream(self.stderr))
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.output.stream(self.stderr))
    }
}

/// A clock stopped at the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Build the WASI context of one store.
pub fn wasi_ctx(output: &GuestOutput) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.stdout(output.stream(false))
        .stderr(output.stream(true))
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .secure_random(rand::rngs::StdRng::seed_from_u64(0x5049_4c4c_4f57))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(0x0054_4f50))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

/// Caps linear memory and records a refusal, so a failed allocation can be
/// reported as a memory-limit error rather than a generic trap.
#[derive(Debug)]
pub struct MemoryLimiter {
    /// Cap in bytes.
    pub cap_bytes: usize,
    /// Set when a growth past the cap was refused.
    pub hit: bool,
    /// Largest memory size granted, in bytes.
    pub peak_bytes: usize,
}

/// Most table elements a plugin may have (function tables are small).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
