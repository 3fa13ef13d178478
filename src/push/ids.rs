//! Names and identifiers: connection ids, user/device/channel name rules, and the home shard
//! of a user or channel.

use std::fmt;
use std::str::FromStr;

/// A connection's id: the shard that holds it, its slot there, and the slot's generation, so an
/// id outlives its connection harmlessly: a reused slot has another generation. Written
/// `c<shard>.<slot>.<generation>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub shard: u16,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}.{}", self.shard, self.slot, self.gen)
    }
}

impl FromStr for ConnId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let rest = s.strip_prefix('c').ok_or(())?;
        let mut it = rest.split('.');
        let shard = it.next().ok_or(())?.parse().map_err(|_| ())?;
        let slot = it.next().ok_or(())?.parse().map_err(|_| ())?;
        let gen = it.next().ok_or(())?.parse().map_err(|_| ())?;
        if it.next().is_some() {
            return Err(());
        }
        Ok(ConnId { shard, slot, gen })
    }
}

// The name rule is part of the client protocol; kept reachable here for the API and tests.
pub(crate) use crate::proto::client::valid_name;

/// The shard that owns a user's or channel's stream (its sequence numbers and directory):
/// from the name's stable slot, so every thread, build and node agrees (`cluster::slot`).
pub fn home_of(name: &str, shards: usize) -> usize {
    crate::cluster::slot::shard_of_slot(crate::cluster::slot::slot(name), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_round_trip() {
        let id = ConnId { shard: 3, slot: 70000, gen: 9 };
        assert_eq!(id.to_string(), "c3.70000.9");
        assert_eq!("c3.70000.9".parse(), Ok(id));
        for bad in ["", "c", "c1.2", "c1.2.3.4", "x1.2.3", "c-1.2.3", "c1.2.x"] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("user-42@example.com"));
        assert!(valid_name("prices/EURUSD:1m"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("ü"));
        assert!(!valid_name(&"a".repeat(129)));
    }

    #[test]
    fn homes_are_stable_and_in_range() {
        for n in 1..8 {
            let h = home_of("prices", n);
            assert!(h < n);
            assert_eq!(h, home_of("prices", n));
        }
    }
}
