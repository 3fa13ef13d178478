//! What a home shard knows about the users and channels homed on it: a user's connections
//! (wherever they are) with device and last activity, and a channel's subscriber counts per
//! shard. Only *who is where*: numbering belongs to `streams`, and outlives these entries,
//! which go when their last connection or subscriber goes.

use std::collections::HashMap;
use std::sync::Arc;

use super::ids::ConnId;

/// Which of a user's connections a push reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Every connection.
    All,
    /// Connections active within the configured window.
    Active,
    /// The most recently active connection.
    One,
    /// Every connection; on a durable user stream the first device to acknowledge settles
    /// the message for all (the others get `cancel`).
    FirstAck,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserConn {
    pub(crate) conn: ConnId,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) connected_ms: u64,
    pub(crate) active_ms: u64,
    /// The token's `info` claim (JSON text), shown in presence queries.
    pub(crate) info: Option<Arc<str>>,
}

#[derive(Debug, Default)]
pub(crate) struct UserEntry {
    pub(crate) conns: Vec<UserConn>,
}

#[derive(Debug, Default)]
pub(crate) struct UserDirectory {
    users: HashMap<Arc<str>, UserEntry>,
}

impl UserDirectory {
    /// Records a connection. With `replace`, returns the user's other connections on the same
    /// device (to be closed as replaced).
    pub(crate) fn join(&mut self, user: &Arc<str>, c: UserConn, replace: bool) -> Vec<ConnId> {
        let e = self.users.entry(user.clone()).or_default();
        let mut replaced = Vec::new();
        if replace && c.device.is_some() {
            e.conns.retain(|o| {
                let same = o.device == c.device;
                if same {
                    replaced.push(o.conn);
                }
                !same
            });
        }
        e.conns.retain(|o| o.conn != c.conn);
        e.conns.push(c);
        replaced
    }

    pub(crate) fn leave(&mut self, user: &str, conn: ConnId) {
        if let Some(e) = self.users.get_mut(user) {
            e.conns.retain(|o| o.conn != conn);
            if e.conns.is_empty() {
                self.users.remove(user);
            }
        }
    }

    pub(crate) fn active(&mut self, user: &str, conn: ConnId, at_ms: u64) {
        if let Some(c) =
            self.users.get_mut(user).and_then(|e| e.conns.iter_mut().find(|o| o.conn == conn))
        {
            c.active_ms = c.active_ms.max(at_ms);
        }
    }

    pub(crate) fn get(&self, user: &str) -> Option<&UserEntry> {
        self.users.get(user)
    }

    /// The connections a push reaches (None: nothing matches).
    pub(crate) fn targets(
        &mut self,
        user: &str,
        device: Option<&str>,
        policy: Policy,
        now_ms: u64,
        active_window_ms: u64,
    ) -> Option<Vec<ConnId>> {
        let e = self.users.get(user)?;
        let matching =
            e.conns.iter().filter(|c| device.is_none_or(|d| c.device.as_deref() == Some(d)));
        let conns: Vec<ConnId> = match policy {
            Policy::All | Policy::FirstAck => matching.map(|c| c.conn).collect(),
            Policy::Active => matching
                .filter(|c| now_ms.saturating_sub(c.active_ms) <= active_window_ms)
                .map(|c| c.conn)
                .collect(),
            Policy::One => matching
                .max_by_key(|c| (c.active_ms, c.connected_ms))
                .map(|c| c.conn)
                .into_iter()
                .collect(),
        };
        (!conns.is_empty()).then_some(conns)
    }
}

#[derive(Debug, Default)]
pub(crate) struct ChannelEntry {
    /// Subscribers per shard.
    pub(crate) counts: Vec<u32>,
}

#[derive(Debug, Default)]
pub(crate) struct ChannelDirectory {
    channels: HashMap<Arc<str>, ChannelEntry>,
}

impl ChannelDirectory {
    /// Applies a subscriber count change from `shard`.
    pub(crate) fn count(&mut self, channel: &Arc<str>, shard: usize, delta: i32, shards: usize) {
        let e = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelEntry { counts: vec![0; shards] });
        if let Some(c) = e.counts.get_mut(shard) {
            *c = c.saturating_add_signed(delta);
        }
        if e.counts.iter().all(|&c| c == 0) {
            self.channels.remove(channel);
        }
    }

    /// Subscribers on one shard.
    pub(crate) fn count_on(&self, channel: &str, shard: usize) -> u64 {
        self.channels.get(channel).and_then(|e| e.counts.get(shard)).map_or(0, |&c| u64::from(c))
    }

    pub(crate) fn subscribers(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |e| e.counts.iter().map(|&c| u64::from(c)).sum())
    }

    /// The shards with subscribers (None: no subscribers).
    pub(crate) fn publish(&self, channel: &str) -> Option<Vec<usize>> {
        let e = self.channels.get(channel)?;
        Some(e.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, _)| i).collect())
    }
}

impl UserDirectory {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32, device: &str, active: u64) -> UserConn {
        UserConn {
            conn: ConnId { shard: 0, slot, gen: 1 },
            device: Some(device.into()),
            connected_ms: slot as u64,
            active_ms: active,
            info: None,
        }
    }

    #[test]
    fn policies_pick_their_devices() {
        let mut d = UserDirectory::default();
        let u: Arc<str> = "42".into();
        d.join(&u, conn(1, "phone", 1000), false);
        d.join(&u, conn(2, "laptop", 5000), false);
        d.join(&u, conn(3, "tablet", 100), false);
        let all = d.targets("42", None, Policy::All, 6000, 2000).unwrap();
        assert_eq!(all.len(), 3);
        let active = d.targets("42", None, Policy::Active, 6000, 2000).unwrap();
        assert_eq!(active.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![2]);
        let one = d.targets("42", None, Policy::One, 6000, 2000).unwrap();
        assert_eq!(one[0].slot, 2);
        d.active("42", ConnId { shard: 0, slot: 3, gen: 1 }, 9000);
        assert_eq!(d.targets("42", None, Policy::One, 9000, 2000).unwrap()[0].slot, 3);
        assert_eq!(d.targets("42", Some("phone"), Policy::All, 9000, 2000).unwrap()[0].slot, 1);
        assert!(d.targets("42", Some("watch"), Policy::All, 9000, 2000).is_none());
        assert!(d.targets("nobody", None, Policy::All, 0, 0).is_none());
    }

    #[test]
    fn replace_returns_the_same_device_and_leave_cleans_up() {
        let mut d = UserDirectory::default();
        let u: Arc<str> = "7".into();
        d.join(&u, conn(1, "phone", 0), true);
        d.join(&u, conn(2, "laptop", 0), true);
        let old = d.join(&u, conn(3, "phone", 0), true);
        assert_eq!(old.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![1]);
        for s in [2, 3] {
            d.leave("7", ConnId { shard: 0, slot: s, gen: 1 });
        }
        assert!(d.is_empty());
    }

    #[test]
    fn channel_counts_and_shards() {
        let mut d = ChannelDirectory::default();
        let c: Arc<str> = "prices".into();
        assert!(d.publish("prices").is_none());
        d.count(&c, 1, 3, 2);
        d.count(&c, 0, 1, 2);
        assert_eq!(d.subscribers("prices"), 4);
        assert_eq!(d.publish("prices"), Some(vec![0, 1]));
        d.count(&c, 0, -1, 2);
        assert_eq!(d.publish("prices"), Some(vec![1]));
        d.count(&c, 1, -3, 2);
        assert_eq!(d.subscribers("prices"), 0);
        assert!(d.publish("prices").is_none());
    }
}
