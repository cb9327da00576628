//! The WASI functions the host replaces after linking wasmtime-wasi: the
//! ones that could wait on real time or make a call's output depend on
//! which instance ran it.
//!
//! - **Clocks never wait.** wasmtime-wasi serves `subscribe-duration` and
//!   `subscribe-instant` with real timers even when the clock the guest
//!   reads is frozen, and epoch interruption cannot fire while the guest is
//!   inside a host call: a plugin calling `std::thread::sleep` would hold
//!   its thread past `limits.timeout_ms` for as long as it asked. Here a
//!   clock subscription is ready at once, as a frozen clock implies: a
//!   sleep returns immediately, a sleep loop spins on fuel and the deadline
//!   like any other loop.
//! - **Polls never block.** `poll` and `pollable.block` look at their
//!   pollables without waiting. Every pollable the sandbox can hand out
//!   (frozen clocks, the log streams, a closed stdin) is ready at once, so
//!   this only matters if a pollable that waits appears (a new WASI
//!   feature): the call then fails with a `capability` error instead of
//!   blocking the host thread.
//! - **Random numbers are seeded per call**, from the change being
//!   processed (topic, partition, offset): the same change sees the same
//!   numbers on any instance, on a retry, on a replay. `init` gets a fixed
//!   seed. The hash-map seed (`insecure-seed`) comes from the same source.
//!   (A guest's language runtime may cache what it drew on its first call,
//!   e.g. Rust's `HashMap` keys per thread; `plugin check` runs each
//!   fixture on a used and on a fresh instance to catch output that
//!   depends on it.) A request for more random bytes than
//!   `limits.output_mb` fails the call with an `output` error: the host
//!   would allocate them.

use super::HostState;
use crate::errors::ErrorKind;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi::p2::{DynPollable, Pollable};

/// The WASI version wasmtime-wasi links; imports of any 0.2.x version
/// resolve to it, so redefining its functions covers them all.
const WASI_VERSION: &str = "0.2.12";

/// A pending pollable may wake itself this many times in one `poll`
/// (a "yield" pattern) before it counts as waiting.
const MAX_IMMEDIATE_WAKES: usize = 64;

/// Replace the clock, poll and random functions of the WASI already in
/// `linker` (which must allow shadowing).
///
/// # Errors
///
/// When a function cannot be defined (a wasmtime version mismatch).
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut clock = linker.instance(&format!("wasi:clocks/monotonic-clock@{WASI_VERSION}"))?;
    clock.func_wrap("subscribe-instant", |mut cx: Ctx<'_>, (_when,): (u64,)| {
        ready_pollable(&mut cx).map(|p| (p,))
    })?;
    clock.func_wrap("subscribe-duration", |mut cx: Ctx<'_>, (_for,): (u64,)| {
        ready_pollable(&mut cx).map(|p| (p,))
    })?;

    let mut poll = linker.instance(&format!("wasi:io/poll@{WASI_VERSION}"))?;
    poll.func_wrap(
        "poll",
        |mut cx: Ctx<'_>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let table = &mut cx.data_mut().table;
            match poll_now(table.poll(pollables)) {
                Some(ready) => ready.map(|r| (r,)),
                None => refuse_wait(&mut cx, "poll"),
            }
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut cx: Ctx<'_>, (pollable,): (Resource<DynPollable>,)| {
            let table = &mut cx.data_mut().table;
            match poll_now(table.block(pollable)) {
                Some(done) => done,
                None => refuse_wait(&mut cx, "pollable.block"),
            }
        },
    )?;

    let mut random = linker.instance(&format!("wasi:random/random@{WASI_VERSION}"))?;
    random.func_wrap("get-random-bytes", |mut cx: Ctx<'_>, (len,): (u64,)| {
        random_bytes(&mut cx, len, Stream::Secure).map(|b| (b,))
    })?;
    random.func_wrap("get-random-u64", |mut cx: Ctx<'_>, (): ()| {
        Ok((cx.data_mut().random.next(Stream::Secure),))
    })?;
    let mut insecure = linker.instance(&format!("wasi:random/insecure@{WASI_VERSION}"))?;
    insecure.func_wrap(
        "get-insecure-random-bytes",
        |mut cx: Ctx<'_>, (len,): (u64,)| {
            random_bytes(&mut cx, len, Stream::Insecure).map(|b| (b,))
        },
    )?;
    insecure.func_wrap("get-insecure-random-u64", |mut cx: Ctx<'_>, (): ()| {
        Ok((cx.data_mut().random.next(Stream::Insecure),))
    })?;
    let mut seed = linker.instance(&format!("wasi:random/insecure-seed@{WASI_VERSION}"))?;
    seed.func_wrap("insecure-seed", |mut cx: Ctx<'_>, (): ()| {
        let r = &mut cx.data_mut().random;
        Ok(((r.next(Stream::Seed), r.next(Stream::Seed)),))
    })?;
    Ok(())
}

type Ctx<'a> = StoreContextMut<'a, HostState>;

/// A pollable that is always ready: what a frozen clock's timers are.
struct Ready;

#[async_trait::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready_pollable(cx: &mut Ctx<'_>) -> wasmtime::Result<Resource<DynPollable>> {
    let table = &mut cx.data_mut().table;
    let ready = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

fn refuse_wait<T>(cx: &mut Ctx<'_>, what: &str) -> wasmtime::Result<T> {
    cx.data_mut().violate(
        ErrorKind::Capability,
        format!(
            "the plugin waited in wasi:io/{what} on something that is not ready; the sandbox never waits (no timers, files or sockets can become ready)"
        ),
    )
}

/// A waker that only records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Drive `future` without waiting: poll it while it completes or wakes
/// itself at once; `None` when it would wait for something else.
fn poll_now<F: Future>(future: F) -> Option<F::Output> {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    for _ in 0..MAX_IMMEDIATE_WAKES {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        if !flag.0.swap(false, Ordering::AcqRel) {
            return None;
        }
    }
    None
}

fn random_bytes(cx: &mut Ctx<'_>, len: u64, stream: Stream) -> wasmtime::Result<Vec<u8>> {
    let state = cx.data_mut();
    if len > state.output_budget_bytes as u64 {
        let budget = state.output_budget_bytes;
        return state.violate(
            ErrorKind::Output,
            format!(
                "the plugin asked for {len} random bytes, more than limits.output_mb ({budget} bytes)"
            ),
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    while bytes.len() < len as usize {
        let word = state.random.next(stream).to_le_bytes();
        let take = word.len().min(len as usize - bytes.len());
        bytes.extend_from_slice(&word[..take]);
    }
    Ok(bytes)
}

/// Which WASI random source a number is drawn for; each has its own
/// sequence, so one source's use does not shift another's.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    Secure = 0,
    Insecure = 1,
    Seed = 2,
}

/// The random sources of one call: deterministic sequences derived from
/// the call's seed.
#[derive(Debug, Default)]
pub(super) struct CallRandom {
    states: [u64; 3],
}

impl CallRandom {
    /// Start the sequences of a call seeded with `seed`.
    pub(super) fn reseed(&mut self, seed: u64) {
        for (i, s) in self.states.iter_mut().enumerate() {
            *s = mix(seed ^ (i as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        }
    }

    /// The next number of `stream` (SplitMix64: a Weyl sequence through a
    /// 64-bit finaliser).
    pub(super) fn next(&mut self, stream: Stream) -> u64 {
        let s = &mut self.states[stream as usize];
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(*s)
    }
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of a call for the change at `topic`/`partition`/`offset`:
/// FNV-1a over the topic, then the position mixed in. Written out here (not
/// `std`'s hasher, whose algorithm may change between Rust releases) so
/// the same change gets the same numbers across host upgrades too.
pub(super) fn change_seed(topic: &str, partition: u32, offset: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(mix(h ^ u64::from(partition)) ^ offset)
}

/// The seed of `init` calls: the same for every instance.
pub(super) const INIT_SEED: u64 = 0x696e_6974; // "init"

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_completes_and_a_pending_one_is_refused() {
        assert_eq!(poll_now(async { 7 }), Some(7));
        assert_eq!(poll_now(std::future::pending::<()>()), None);
    }

    #[test]
    fn a_future_that_yields_once_still_completes_without_waiting() {
        // The "yield to the executor" pattern: pending once, waking itself.
        let mut yielded = false;
        let f = std::future::poll_fn(move |cx| {
            if yielded {
                Poll::Ready(1)
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        });
        assert_eq!(poll_now(f), Some(1));
        // One that keeps waking itself forever is a busy wait: refused.
        let spin = std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<()> {
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(poll_now(spin), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_streams_differ() {
        let draw = |seed| {
            let mut r = CallRandom::default();
            r.reseed(seed);
            [
                r.next(Stream::Secure),
                r.next(Stream::Secure),
                r.next(Stream::Insecure),
                r.next(Stream::Seed),
            ]
        };
        let a = change_seed("case-sql", 3, 42);
        assert_eq!(draw(a), draw(a));
        assert_ne!(draw(a), draw(change_seed("case-sql", 3, 43)));
        assert_ne!(draw(a), draw(change_seed("case-sql", 2, 42)));
        assert_ne!(draw(a), draw(change_seed("form-sql", 3, 42)));
        let d = draw(a);
        assert_ne!(d[0], d[1]);
        assert_ne!(d[0], d[2], "the secure and insecure streams differ");
    }

    #[test]
    fn seeds_are_stable_across_releases() {
        // Pinned: a replay after a host upgrade must see the same numbers.
        // The value was computed apart from this code (FNV-1a 64 of
        // "case-sql", then SplitMix64's finaliser twice, in Python).
        assert_eq!(change_seed("case-sql", 0, 0), 0xf27c_5e5f_65d1_b122);
    }
}
