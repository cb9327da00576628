//! The answers of one lookup resource, kept for a while: at most
//! `capacity` keys, each for `ttl`, the oldest stored going first when
//! full. "Absent" is an answer too (most keys plugins ask about, such as
//! a known user, are asked again and again); a failure is never kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded cache with a time to live.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// key -> (answer, when stored, stamp of the store).
    entries: HashMap<String, (Option<String>, Instant, u64)>,
    /// Keys in the order stored, with the stamp they were stored under
    /// (a key stored again leaves a stale pair behind).
    order: VecDeque<(String, u64)>,
    stamp: u64,
}

impl Cache {
    /// A cache of at most `capacity` answers, each kept for `ttl`. Either
    /// being zero turns it off.
    pub fn new(capacity: usize, ttl: Duration) -> Cache {
        Cache {
            capacity,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether it keeps anything (capacity and TTL both above zero).
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && !self.ttl.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a thread panicked mid-update; the
        // entries are whole values either way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored answer for `key` at `now`, if one is fresh: `Some(None)`
    /// is a cached "absent".
    pub fn get(&self, key: &str, now: Instant) -> Option<Option<String>> {
        if !self.enabled() {
            return None;
        }
        let inner = self.lock();
        let (value, stored, _) = inner.entries.get(key)?;
        (now.duration_since(*stored) < self.ttl).then(|| value.clone())
    }

    /// Whether `key` has a fresh answer at `now`.
    pub fn has(&self, key: &str, now: Instant) -> bool {
        self.enabled()
            && self
                .lock()
                .entries
                .get(key)
                .is_some_and(|(_, stored, _)| now.duration_since(*stored) < self.ttl)
    }

    /// Keep `value` as the answer for `key`, stored at `now`.
    pub fn put(&self, key: &str, value: Option<String>, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        inner.stamp += 1;
        let stamp = inner.stamp;
        inner.entries.insert(key.to_owned(), (value, now, stamp));
        inner.order.push_back((key.to_owned(), stamp));
        while inner.entries.len() > self.capacity {
            let Some((oldest, stamp)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&oldest).is_some_and(|e| e.2 == stamp) {
                inner.entries.remove(&oldest);
            }
        }
        // Keys stored again leave stale pairs; drop them before the queue
        // outgrows the entries it tracks.
        if inner.order.len() > 2 * self.capacity.max(16) {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(k, s)| entries.get(k).is_some_and(|e| e.2 == *s));
        }
    }

    /// How many answers it holds (fresh or not).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_absences_are_kept_until_their_ttl() {
        let cache = Cache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        cache.put("u1", Some("{\"a\":1}".into()), t0);
        cache.put("u2", None, t0);
        assert_eq!(cache.get("u1", t0), Some(Some("{\"a\":1}".into())));
        assert_eq!(cache.get("u2", t0), Some(None));
        assert_eq!(cache.get("u3", t0), None);
        let later = t0 + Duration::from_secs(59);
        assert!(cache.has("u1", later));
        let expired = t0 + Duration::from_secs(60);
        assert_eq!(cache.get("u1", expired), None);
        assert!(!cache.has("u2", expired));
    }

    #[test]
    fn the_oldest_stored_goes_first_when_full() {
        let cache = Cache::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for k in ["a", "b", "c"] {
            cache.put(k, None, t);
        }
        // Storing `a` again makes it the newest: `b` is the oldest now.
        cache.put("a", Some("1".into()), t);
        cache.put("d", None, t);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b", t), None);
        assert_eq!(cache.get("a", t), Some(Some("1".into())));
        assert!(cache.has("c", t) && cache.has("d", t));
    }

    #[test]
    fn stores_of_one_key_do_not_grow_it() {
        let cache = Cache::new(2, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..10_000 {
            cache.put("k", Some(i.to_string()), t);
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.lock().order.len() <= 32);
        assert_eq!(cache.get("k", t), Some(Some("9999".into())));
    }

    #[test]
    fn zero_capacity_or_ttl_keeps_nothing() {
        let t = Instant::now();
        for cache in [
            Cache::new(0, Duration::from_secs(60)),
            Cache::new(10, Duration::ZERO),
        ] {
            cache.put("k", None, t);
            assert!(cache.is_empty());
            assert_eq!(cache.get("k", t), None);
        }
    }
}
