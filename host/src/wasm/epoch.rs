//! The engine's epoch ticker: what turns `limits.timeout_ms` into a
//! deadline a running guest cannot pass (wasmtime checks the epoch at
//! function entries and loop heads).
//!
//! It advances the epoch every [`EPOCH_TICK`] while any plugin call runs,
//! and sleeps when none has run for [`IDLE_AFTER`]: an idle host must
//! not wake a thread a thousand times a second. A call that starts wakes
//! it ([`Ticker::begin`]); waking a thread that is not asleep is an atomic
//! swap, so a busy pillow pays no system call per change. A call's
//! deadline counts ticks from the epoch when it starts, and the epoch does
//! not move while the ticker sleeps, so sleeping never shortens one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One epoch: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long no call may have run before the ticker sleeps.
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// The ticker of one engine, stopped when dropped.
#[derive(Debug)]
pub struct Ticker {
    /// Calls running now.
    active: AtomicUsize,
    stop: AtomicBool,
    thread: std::thread::Thread,
}

impl Ticker {
    /// Start ticking `engine`.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn start(engine: wasmtime::Engine) -> std::io::Result<Arc<Ticker>> {
        Ticker::start_with(move || engine.increment_epoch())
    }

    fn start_with(tick: impl Fn() + Send + 'static) -> std::io::Result<Arc<Ticker>> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Ticker>>();
        let handle = std::thread::Builder::new()
            .name("pillowtop-epoch".into())
            .spawn(move || {
                let Ok(ticker) = rx.recv() else { return };
                ticker.run(&tick);
            })?;
        let ticker = Arc::new(Ticker {
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: handle.thread().clone(),
        });
        // The thread holds the ticker strongly while it runs; `stop` ends it.
        let _ = tx.send(ticker.clone());
        Ok(ticker)
    }

    fn run(&self, tick: &dyn Fn()) {
        let idle_ticks = IDLE_AFTER.as_millis() / EPOCH_TICK.as_millis();
        let mut idle = 0;
        while !self.stop.load(Ordering::Relaxed) {
            if self.active.load(Ordering::SeqCst) == 0 {
                idle += 1;
                if idle > idle_ticks {
                    // Until a call starts (or a stale wake-up token, after
                    // which it ticks IDLE_AFTER again before sleeping).
                    std::thread::park();
                    idle = 0;
                    continue;
                }
            } else {
                idle = 0;
            }
            std::thread::sleep(EPOCH_TICK);
            tick();
        }
    }

    /// A plugin call starts: tick until it ends.
    pub fn begin(&self) {
        if self.active.fetch_add(1, Ordering::SeqCst) == 0 {
            self.thread.unpark();
        }
    }

    /// A plugin call ended.
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stop the thread (the runtime is going away).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn ticks_while_a_call_runs_and_sleeps_once_none_has_for_a_while() {
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        let ticker = Ticker::start_with(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let now = || ticks.load(Ordering::SeqCst);
        let wait = |d: Duration| std::thread::sleep(d);
        // Asleep from the start, once IDLE_AFTER has passed.
        wait(IDLE_AFTER * 3);
        let asleep = now();
        wait(Duration::from_millis(50));
        assert_eq!(now(), asleep, "an idle ticker does not tick");

        ticker.begin();
        wait(Duration::from_millis(50));
        assert!(now() > asleep, "a running call makes it tick");
        // A second call beside the first; the first ends: still ticking.
        ticker.begin();
        ticker.end();
        let running = now();
        wait(IDLE_AFTER * 2);
        assert!(now() > running, "one call still runs");
        ticker.end();
        wait(IDLE_AFTER * 3);
        let idle = now();
        wait(Duration::from_millis(50));
        assert_eq!(
            now(),
            idle,
            "asleep again once no call has run for IDLE_AFTER"
        );
        ticker.stop();
    }
}
