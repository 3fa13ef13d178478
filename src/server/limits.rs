//! The per-source-IP connection cap, shared by all shards. Taken only at upgrade and close,
//! never per message; striped so shards rarely meet on one lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

const STRIPES: usize = 64;

#[derive(Debug)]
pub(crate) struct IpLimiter {
    max: u32,
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl IpLimiter {
    pub(crate) fn new(max: u32) -> Self {
        IpLimiter {
            max,
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.stripes[self.hasher.hash_one(ip) as usize % STRIPES]
    }

    /// Counts one more connection from `ip`, unless it already has the maximum.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> bool {
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn release(&self, ip: IpAddr) {
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_separately() {
        let l = IpLimiter::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(l.try_acquire(a) && l.try_acquire(a));
        assert!(!l.try_acquire(a));
        assert!(l.try_acquire(b));
        l.release(a);
        assert!(l.try_acquire(a));
    }
}
