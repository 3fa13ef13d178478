//! Idempotent requests: an operation sent with `idempotency_key` again within the window is not
//! done again; it is answered with the first one's report and `"duplicate": true`. The table
//! lives on the API thread (one owner, no lock shared with shards), holds each key for the
//! window, and is capped: when it is full of keys still in their window, keyed requests are
//! refused (503) rather than a key forgotten early, which would deliver twice.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug)]
enum State {
    /// The first request is still waiting for its report.
    Pending,
    /// Its answer, to repeat.
    Done(Value),
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    state: State,
}

/// What a keyed request should do.
#[derive(Debug)]
pub(crate) enum Claim {
    /// First within the window: do it, then [`Idempotency::done`] (or [`Idempotency::failed`]).
    First,
    /// Seen: answer this.
    Duplicate(Value),
    /// Seen and still under way: ask again shortly.
    Wait,
}

#[derive(Debug)]
pub struct Idempotency {
    window: Duration,
    max_keys: usize,
    inner: RefCell<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// Keys by first use, for expiry.
    order: VecDeque<(Instant, String)>,
}

impl Idempotency {
    pub fn new(window: Duration, max_keys: usize) -> Idempotency {
        Idempotency { window, max_keys, inner: RefCell::new(Table::default()) }
    }

    fn expire(&self, t: &mut Table, now: Instant) {
        while let Some((at, _)) = t.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((at, key)) = t.order.pop_front() {
                // A key re-claimed after a failure has a newer entry: keep that one.
                if t.entries.get(&key).is_some_and(|e| e.at == at) {
                    t.entries.remove(&key);
                }
            }
        }
    }

    /// Claims `key` at `now`.
    pub(crate) fn claim(&self, key: &str, now: Instant) -> Result<Claim, ApiError> {
        let mut t = self.inner.borrow_mut();
        self.expire(&mut t, now);
        match t.entries.get(key) {
            Some(Entry { state: State::Done(v), .. }) => return Ok(Claim::Duplicate(v.clone())),
            Some(Entry { state: State::Pending, .. }) => return Ok(Claim::Wait),
            None => {}
        }
        if t.entries.len() >= self.max_keys {
            return Err(ApiError::IdempotencyFull { max: self.max_keys });
        }
        t.entries.insert(key.to_string(), Entry { at: now, state: State::Pending });
        t.order.push_back((now, key.to_string()));
        Ok(Claim::First)
    }

    /// The first request for `key` was done; later ones get `answer`.
    pub(crate) fn done(&self, key: &str, answer: &Value) {
        if let Some(e) = self.inner.borrow_mut().entries.get_mut(key) {
            e.state = State::Done(answer.clone());
        }
    }

    /// The first request for `key` was refused (nothing delivered): a retry may do it.
    pub(crate) fn failed(&self, key: &str) {
        self.inner.borrow_mut().entries.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.borrow().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_is_done_once_within_its_window() {
        let t0 = crate::clock::now();
        let idem = Idempotency::new(Duration::from_secs(60), 2);
        assert!(matches!(idem.claim("a", t0), Ok(Claim::First)));
        assert!(matches!(idem.claim("a", t0), Ok(Claim::Wait)), "still under way");
        idem.done("a", &json!({"queued": 3}));
        match idem.claim("a", t0 + Duration::from_secs(59)) {
            Ok(Claim::Duplicate(v)) => assert_eq!(v["queued"], 3),
            c => panic!("{c:?}"),
        }
        assert!(matches!(idem.claim("b", t0), Ok(Claim::First)));
        idem.failed("b");
        assert!(
            matches!(idem.claim("b", t0), Ok(Claim::First)),
            "a refused request may be retried"
        );
        assert!(
            matches!(idem.claim("c", t0), Err(ApiError::IdempotencyFull { max: 2 })),
            "full, and says so"
        );
        // Past the window the key is forgotten and may be used again.
        assert!(matches!(idem.claim("a", t0 + Duration::from_secs(61)), Ok(Claim::First)));
        assert_eq!(idem.len(), 1);
    }
}
