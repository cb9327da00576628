//! Which plugin calls are running right now, for a process that must stop.
//!
//! Every call is bounded (fuel, `limits.timeout_ms`, clocks and polls that
//! never wait), but `timeout_ms` may be up to ten minutes and a chunk holds
//! many calls. When a stopping process runs out of its grace period, it
//! names what it leaves behind: the plugin, the call, the change and its
//! partition, and for how long it has run.
//!
//! Each [`Processor`](super::Processor) owns one [`CallSlot`], registered
//! in the runtime's [`Calls`]. Marking a call costs two uncontended lock
//! round trips and a clock read: the slot's buffers are reused, so nothing
//! is allocated per call.

use super::epoch::Ticker;
use crate::change::Change;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A call in progress, as reported at shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInProgress {
    /// `name@version+hash`.
    pub plugin: String,
    /// `init` or `process-change`.
    pub call: &'static str,
    /// The change being processed (none for `init`).
    pub change: Option<ChangeRef>,
    /// How long the call has run.
    pub running_for: Duration,
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRef {
    /// Document id.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

impl std::fmt::Display for CallInProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {} in {}", self.plugin, self.call)?;
        if let Some(c) = &self.change {
            write!(
                f,
                " of change {:?} at {}:{} offset {}",
                c.id, c.topic, c.partition, c.offset
            )?;
        }
        write!(f, " for {:.1} s", self.running_for.as_secs_f64())
    }
}

#[derive(Debug)]
struct Slot {
    plugin: Arc<str>,
    call: Option<&'static str>,
    has_change: bool,
    id: String,
    topic: Option<Arc<str>>,
    partition: u32,
    offset: u64,
    since: Instant,
}

/// The calls of one process.
#[derive(Debug, Default)]
pub struct Calls {
    slots: Mutex<Vec<Weak<Mutex<Slot>>>>,
    /// Told when calls start and end, so it ticks only while one runs.
    ticker: Option<Arc<Ticker>>,
}

impl Calls {
    /// The calls of a runtime whose epoch `ticker` must run while any of
    /// them does.
    pub fn with_ticker(ticker: Arc<Ticker>) -> Calls {
        Calls {
            slots: Mutex::default(),
            ticker: Some(ticker),
        }
    }

    /// A slot for one processor of `plugin` (`name@version`).
    pub fn slot(&self, plugin: Arc<str>) -> CallSlot {
        let slot = Arc::new(Mutex::new(Slot {
            plugin,
            call: None,
            has_change: false,
            id: String::new(),
            topic: None,
            partition: 0,
            offset: 0,
            since: Instant::now(),
        }));
        let mut slots = lock(&self.slots);
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        CallSlot(slot, self.ticker.clone())
    }

    /// Every call running now, longest first.
    pub fn in_progress(&self) -> Vec<CallInProgress> {
        let now = Instant::now();
        let mut out: Vec<CallInProgress> = lock(&self.slots)
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|slot| {
                let s = lock(&slot);
                let call = s.call?;
                Some(CallInProgress {
                    plugin: s.plugin.to_string(),
                    call,
                    change: s.has_change.then(|| ChangeRef {
                        id: s.id.clone(),
                        topic: s.topic.as_deref().unwrap_or_default().to_owned(),
                        partition: s.partition,
                        offset: s.offset,
                    }),
                    running_for: now.saturating_duration_since(s.since),
                })
            })
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.running_for));
        out
    }
}

/// One processor's mark of what it is running.
#[derive(Debug)]
pub struct CallSlot(Arc<Mutex<Slot>>, Option<Arc<Ticker>>);

impl CallSlot {
    /// A `process-change` call of `change` starts.
    pub fn begin_change(&self, change: &Change) {
        if let Some(t) = &self.1 {
            t.begin();
        }
        let mut s = lock(&self.0);
        s.call = Some("process-change");
        s.has_change = true;
        s.id.clear();
        s.id.push_str(&change.id);
        if s.topic.as_deref() != Some(&*change.topic) {
            s.topic = Some(change.topic.clone());
        }
        s.partition = change.partition;
        s.offset = change.offset;
        s.since = Instant::now();
    }

    /// An `init` call (of a fresh instance) starts.
    pub fn begin_init(&self) {
        if let Some(t) = &self.1 {
            t.begin();
        }
        let mut s = lock(&self.0);
        s.call = Some("init");
        s.has_change = false;
        s.since = Instant::now();
    }

    /// The call ended.
    pub fn end(&self) {
        let mut s = lock(&self.0);
        if s.call.take().is_some()
            && let Some(t) = &self.1
        {
            t.end();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A slot is a few plain fields, consistent after any panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, offset: u64) -> Change {
        Change::new(id, "case-sql", 2, offset)
    }

    #[test]
    fn reports_running_calls_and_forgets_ended_ones_and_dropped_slots() {
        let calls = Calls::default();
        let a = calls.slot(Arc::from("a@1+x"));
        let b = calls.slot(Arc::from("b@1+y"));
        assert!(calls.in_progress().is_empty());
        a.begin_change(&change("doc-1", 7));
        b.begin_init();
        let mut running = calls.in_progress();
        running.sort_by(|x, y| x.plugin.cmp(&y.plugin));
        assert_eq!(running.len(), 2);
        assert_eq!(
            running[0].change,
            Some(ChangeRef {
                id: "doc-1".into(),
                topic: "case-sql".into(),
                partition: 2,
                offset: 7
            })
        );
        assert_eq!(running[0].call, "process-change");
        assert!(running[0].to_string().starts_with(
            "plugin a@1+x in process-change of change \"doc-1\" at case-sql:2 offset 7 for "
        ));
        assert_eq!(running[1].call, "init");
        assert_eq!(running[1].change, None);
        a.end();
        assert_eq!(calls.in_progress().len(), 1);
        drop(b);
        assert!(calls.in_progress().is_empty());
        let _c = calls.slot(Arc::from("c@1+z"));
        assert_eq!(lock(&calls.slots).len(), 2, "dropped slots are pruned");
    }
}
