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

/// Buckets one stripe keeps before it forgets the full ones (an address whose bucket has
/// refilled is the same as one never seen).
const BUCKETS_PER_STRIPE: usize = 4096;

/// A token bucket per source address for handshakes (`--handshake-rate-per-ip`, burst
/// `--handshake-burst`), shared by all shards; taken once per upgrade request, with the time
/// as an input.
#[derive(Debug)]
pub(crate) struct HandshakeRate {
    per_ms: f64,
    burst: f64,
    hasher: RandomState,
    /// Address → (tokens, when last refilled in Unix ms).
    stripes: Vec<Mutex<HashMap<IpAddr, (f64, u64)>>>,
}

impl HandshakeRate {
    pub(crate) fn new(per_second: f64, burst: u32) -> Self {
        HandshakeRate {
            per_ms: per_second / 1000.0,
            burst: f64::from(burst.max(1)),
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token for `ip` at `now_ms`; `Err(ms)`: none left, one comes in `ms`.
    pub(crate) fn try_take(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let stripe = &self.stripes[self.hasher.hash_one(ip) as usize % STRIPES];
        let mut map = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= BUCKETS_PER_STRIPE && !map.contains_key(&ip) {
            let (per_ms, burst) = (self.per_ms, self.burst);
            map.retain(|_, (t, at)| *t + now_ms.saturating_sub(*at) as f64 * per_ms < burst);
        }
        let (tokens, at) = map.entry(ip).or_insert((self.burst, now_ms));
        *tokens = (*tokens + now_ms.saturating_sub(*at) as f64 * self.per_ms).min(self.burst);
        *at = now_ms.max(*at);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_ms).ceil() as u64)
        }
    }
}

/// A small fast generator (xorshift64*) for jittered retry hints: not for secrets.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        if n == 0 {
            0
        } else {
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let r = HandshakeRate::new(2.0, 3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(r.try_take(a, 1000), Ok(()));
        }
        assert_eq!(r.try_take(a, 1000), Err(500), "one token every 500 ms");
        assert_eq!(r.try_take(b, 1000), Ok(()), "each address has its own bucket");
        assert_eq!(r.try_take(a, 1250), Err(250));
        assert_eq!(r.try_take(a, 1500), Ok(()));
        assert_eq!(r.try_take(a, 1_000_000), Ok(()));
        // Never above the burst, however long it waited.
        assert!(r.try_take(a, 1_000_000).is_ok() && r.try_take(a, 1_000_000).is_ok());
        assert!(r.try_take(a, 1_000_000).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_a_stripe_fills() {
        let r = HandshakeRate::new(1000.0, 1);
        for i in 0..(STRIPES * BUCKETS_PER_STRIPE * 2) as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            assert!(r.try_take(ip, u64::from(i)).is_ok());
        }
        let held: usize = r.stripes.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= STRIPES * BUCKETS_PER_STRIPE, "{held}");
    }

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
