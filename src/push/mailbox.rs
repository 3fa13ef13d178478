//! Durable user streams' delivery state on the user's home shard: each user's mailbox (the
//! stream's messages not yet settled, capped by count, bytes and age), each device's
//! acknowledged cursor, and each connection's redelivery clock. A pure state machine: the
//! home calls it with the time and sends what it returns.
//!
//! - Every message of a durable user stream is kept until it is settled: acknowledged by the
//!   device it was addressed to, by the first device for `first_ack`, or by every device
//!   that has acknowledged anything (a device never seen gets what is still kept); or until
//!   its age, its own `ttl` or the caps drop it (counted, and a device that had not
//!   acknowledged it is told `reset` when it comes back).
//! - Acks are cumulative per device: `ack` N acknowledges everything up to N.
//! - A connection that was sent messages it has not acknowledged gets them again after the
//!   ack timeout, doubling each time, up to the attempt cap; then they wait for its next
//!   connection, which starts from its device's cursor.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::history::Keep;
use super::ids::ConnId;
use super::journal::RecordId;
use super::msg::Frame;

/// The clocks, from the configuration (the caps are each stream's `Keep`: messages kept
/// per user, their frame bytes, the longest any is kept).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MailParams {
    /// First redelivery after this long unacknowledged, then doubling; at most this many.
    pub(crate) ack_timeout_ms: u64,
    pub(crate) attempts: u32,
    /// Device cursors kept per user (the least recently acknowledged goes first).
    pub(crate) devices: usize,
    /// How long a user with nothing kept and nothing connected keeps its device cursors
    /// (the mailbox's age cap: a message stored within it still finds them).
    pub(crate) cursor_ttl_ms: u64,
}

/// The device key of a connection without a device.
pub(crate) const NO_DEVICE: &str = "";

#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    /// When it was pushed (Unix ms).
    at_ms: u64,
    /// When it stops being delivered (Unix ms): its age cap or its own `ttl`.
    expires_ms: u64,
    frame: Frame,
    /// Only for this device (`device` on the push).
    device: Option<Arc<str>>,
    first_ack: bool,
    /// Its record in the log, if the shard keeps one.
    rec: Option<RecordId>,
}

#[derive(Clone, Debug)]
struct Cursor {
    device: Arc<str>,
    acked: u64,
    at_ms: u64,
    rec: Option<RecordId>,
}

/// A connection's redelivery state.
#[derive(Clone, Debug)]
struct Live {
    conn: ConnId,
    device: Arc<str>,
    /// The highest seq sent to it.
    sent: u64,
    due_ms: u64,
    attempts: u32,
}

impl UserMail {
    /// Lets go what the cursors settle: a device's message once its cursor passed it, one
    /// for every device once all cursors did, a `first_ack` one once any ack reached
    /// `first_ack_upto`. Returns how many and their bytes.
    fn settle(&mut self, first_ack_upto: u64, released: &mut Vec<RecordId>) -> (usize, usize) {
        let cursors = &self.cursors;
        let (n, mut freed, mut hold) = (self.entries.len(), 0, self.hold_ms);
        self.entries.retain(|e| {
            let done = match (&e.device, e.first_ack) {
                (_, true) if e.seq <= first_ack_upto => true,
                (Some(d), _) => cursor_of(cursors, d) >= e.seq,
                (None, _) => !cursors.is_empty() && cursors.iter().all(|c| c.acked >= e.seq),
            };
            if done {
                freed += e.frame.bytes.len();
                hold = hold.max(e.expires_ms);
                released.extend(e.rec);
            }
            !done
        });
        self.hold_ms = hold;
        self.bytes -= freed;
        (n - self.entries.len(), freed)
    }
}

#[derive(Debug, Default)]
struct UserMail {
    entries: VecDeque<Entry>,
    bytes: usize,
    cursors: Vec<Cursor>,
    live: Vec<Live>,
    /// The highest seq dropped unsettled (caps, age): a device behind it lost messages.
    lost_upto: u64,
    /// Every message up to here was let go at once (a `DELETE` of the mailbox): a replay
    /// drops what its records still say of them.
    gone_upto: u64,
    /// The log record that says `lost_upto` and `gone_upto`.
    mark_rec: Option<RecordId>,
    /// Until when a message let go (settled by an ack, or cleared) would still be live if its
    /// record were read back: the user's cursors and mark, which say it is gone, stay that
    /// long, even once nothing else is left (a replay would bring it back otherwise).
    hold_ms: u64,
}

/// What an ack did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Acked {
    /// `cancel` to send: connections of other devices that were sent a `first_ack`
    /// message this ack settled, with its seq.
    pub(crate) cancels: Vec<(ConnId, u64)>,
    /// Messages settled and let go.
    pub(crate) settled: u64,
    /// The device's cursor moved (the new one is to be written down).
    pub(crate) moved: bool,
}

/// What a connection that joins gets of its user's mailbox.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Unacknowledged messages for its device, oldest first.
    pub(crate) frames: Vec<Frame>,
    /// Their seqs.
    pub(crate) seqs: Vec<u64>,
    /// Its device's cursor is behind messages that were dropped unsettled.
    pub(crate) lost: bool,
    /// The device's acknowledged cursor (0 when it has none).
    pub(crate) acked: u64,
}

/// A user's mailbox as the API shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailInfo {
    pub count: usize,
    pub bytes: usize,
    pub oldest: Option<u64>,
    pub newest: Option<u64>,
    /// Device and acknowledged seq (`""`: connections without a device).
    pub cursors: Vec<(Arc<str>, u64)>,
}

/// A mailbox record that lives in a segment being emptied: what it says, to be written again.
#[derive(Debug)]
pub(crate) enum Kept<'a> {
    Push { seq: u64, at_ms: u64, frame: &'a Frame, device: Option<&'a str>, first_ack: bool },
    Cursor { device: &'a str, acked: u64, at_ms: u64 },
    Mark { lost_upto: u64, gone_upto: u64 },
}

/// What the mailboxes dropped and redelivered, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MailCounts {
    pub(crate) evicted: u64,
    pub(crate) expired: u64,
    pub(crate) redelivered: u64,
    pub(crate) gave_up: u64,
    pub(crate) acks: u64,
}

#[derive(Debug)]
pub(crate) struct Mailboxes {
    users: HashMap<Arc<str>, UserMail>,
    /// (due, user, connection) of every connection waiting for an ack; stale ones are skipped.
    due: BTreeSet<(u64, Arc<str>, ConnId)>,
    held: usize,
    pub(crate) counts: MailCounts,
    /// Log records no longer needed (the home releases them), and users whose `lost_upto`
    /// rose (the home writes a mark for each).
    pub(crate) released: Vec<RecordId>,
    pub(crate) marked: Vec<Arc<str>>,
}

impl Mailboxes {
    pub(crate) fn new() -> Mailboxes {
        Mailboxes {
            users: HashMap::new(),
            due: BTreeSet::new(),
            held: 0,
            counts: MailCounts::default(),
            released: Vec::new(),
            marked: Vec::new(),
        }
    }

    /// Keeps message `seq` of `user`'s stream (every durable message, delivered or not).
    /// Returns how many older messages the caps dropped to make room.
    #[allow(clippy::too_many_arguments)] // reason: one message's fields, named at the call
    pub(crate) fn put(
        &mut self,
        user: &Arc<str>,
        seq: u64,
        frame: Frame,
        device: Option<Arc<str>>,
        first_ack: bool,
        ttl_ms: Option<u64>,
        now_ms: u64,
        p: &Keep,
        rec: Option<RecordId>,
    ) -> u64 {
        let m = self.users.entry(user.clone()).or_default();
        // Replay reads a message copied forward after newer ones, and may read it twice (a
        // crash before the old segment went): entries stay in seq order, once each.
        let at = m.entries.partition_point(|e| e.seq < seq);
        let expires_ms = now_ms.saturating_add(ttl_ms.map_or(p.ttl_ms, |t| t.min(p.ttl_ms)));
        if seq <= m.gone_upto {
            m.hold_ms = m.hold_ms.max(expires_ms);
            self.released.extend(rec);
            return 0;
        }
        if let Some(e) = m.entries.get_mut(at).filter(|e| e.seq == seq) {
            self.released.extend(std::mem::replace(&mut e.rec, rec));
            return 0;
        }
        let size = frame.bytes.len();
        let e = Entry { seq, at_ms: now_ms, expires_ms, frame, device, first_ack, rec };
        m.entries.insert(at, e);
        m.bytes += size;
        self.held += size;
        let mut evicted = 0;
        while m.entries.len() > p.size || (m.bytes > p.bytes && m.entries.len() > 1) {
            let Some(e) = m.entries.pop_front() else { break };
            m.bytes -= e.frame.bytes.len();
            self.held -= e.frame.bytes.len();
            m.lost_upto = m.lost_upto.max(e.seq);
            self.released.extend(e.rec);
            evicted += 1;
        }
        if evicted > 0 {
            self.marked.push(user.clone());
        }
        self.counts.evicted += evicted;
        evicted
    }

    /// Message `seq` went out live to `conn` (of `device`): it is waited for from now.
    pub(crate) fn sent(
        &mut self,
        user: &Arc<str>,
        conn: ConnId,
        device: &Arc<str>,
        seq: u64,
        now_ms: u64,
        p: &MailParams,
    ) {
        let Some(m) = self.users.get_mut(user) else { return };
        let l = match m.live.iter_mut().position(|l| l.conn == conn) {
            Some(i) => &mut m.live[i],
            None => {
                m.live.push(Live { conn, device: device.clone(), sent: 0, due_ms: 0, attempts: 0 });
                let last = m.live.len() - 1;
                &mut m.live[last]
            }
        };
        let idle = l.sent <= cursor_of(&m.cursors, device);
        l.sent = l.sent.max(seq);
        if idle {
            l.due_ms = now_ms + p.ack_timeout_ms;
            l.attempts = 0;
            self.due.insert((l.due_ms, user.clone(), conn));
        }
    }

    /// A connection of `device` opens: what it has not acknowledged, oldest first (counted as
    /// sent to it, so its redelivery clock starts).
    pub(crate) fn joined(
        &mut self,
        user: &Arc<str>,
        conn: ConnId,
        device: &Arc<str>,
        now_ms: u64,
        p: &MailParams,
    ) -> Pending {
        let Some(m) = self.users.get_mut(user) else { return Pending::default() };
        let acked = cursor_of(&m.cursors, device);
        let known = m.cursors.iter().any(|c| c.device == *device);
        let mut last = acked;
        let mut seqs = Vec::new();
        let frames: Vec<Frame> = m
            .entries
            .iter()
            .filter(|e| e.seq > acked && e.expires_ms > now_ms && for_device(e, device))
            .map(|e| {
                last = e.seq;
                seqs.push(e.seq);
                e.frame.clone()
            })
            .collect();
        m.live.retain(|l| l.conn != conn);
        let pending = !frames.is_empty();
        let due_ms = now_ms + p.ack_timeout_ms;
        m.live.push(Live { conn, device: device.clone(), sent: last, due_ms, attempts: 0 });
        if pending {
            self.due.insert((now_ms + p.ack_timeout_ms, user.clone(), conn));
        }
        // A device with no cursor yet (never acknowledged, or its cursor went with the
        // `--mailbox-devices` cap) cannot say what it missed: anything dropped unsettled may
        // have been for it, so it is told too.
        let lost = if known { acked < m.lost_upto } else { m.lost_upto > 0 };
        Pending { frames, seqs, lost, acked }
    }

    /// The connection closed: its redelivery stops (the device's cursor stays).
    pub(crate) fn left(&mut self, user: &str, conn: ConnId) {
        if let Some(m) = self.users.get_mut(user) {
            m.live.retain(|l| l.conn != conn);
            // A mark, or messages let go that a replay could bring back, wait for `expire`.
            let idle = m.entries.is_empty() && m.live.is_empty() && m.cursors.is_empty();
            if idle && m.mark_rec.is_none() && m.hold_ms == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Whether the user has anything here (messages, connections, cursors): its stream's
    /// numbering must then hold, since these name its seqs.
    pub(crate) fn holds(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// `device` acknowledged everything up to `seq` (never past the stream's `last`).
    pub(crate) fn ack(
        &mut self,
        user: &Arc<str>,
        device: &Arc<str>,
        seq: u64,
        last: u64,
        now_ms: u64,
        p: &MailParams,
    ) -> Acked {
        self.counts.acks += 1;
        let m = self.users.entry(user.clone()).or_default();
        let seq = seq.min(last);
        let before = cursor_of(&m.cursors, device);
        let mut out = Acked::default();
        match m.cursors.iter_mut().find(|c| c.device == *device) {
            Some(c) => {
                out.moved = seq > c.acked;
                c.acked = c.acked.max(seq);
                c.at_ms = now_ms;
            }
            None => {
                out.moved = true;
                let c = Cursor { device: device.clone(), acked: seq, at_ms: now_ms, rec: None };
                m.cursors.push(c);
                if m.cursors.len() > p.devices {
                    // The device that acknowledged least recently goes.
                    if let Some(i) =
                        m.cursors.iter().enumerate().min_by_key(|(_, c)| c.at_ms).map(|(i, _)| i)
                    {
                        let gone = m.cursors.swap_remove(i);
                        self.released.extend(gone.rec);
                    }
                }
            }
        }
        // first_ack messages this ack settles: the other devices that were sent one are told.
        for e in m.entries.iter().filter(|e| e.first_ack && e.seq > before && e.seq <= seq) {
            for l in m.live.iter().filter(|l| l.device != *device && l.sent >= e.seq) {
                out.cancels.push((l.conn, e.seq));
            }
        }
        let (settled, freed) = m.settle(seq, &mut self.released);
        out.settled = settled as u64;
        self.held -= freed;
        // first_ack messages settled by another device are not redelivered: a connection
        // that waited only for those waits no more.
        let newest_open = |m: &UserMail, d: &Arc<str>| {
            m.entries.iter().filter(|e| for_device(e, d)).map(|e| e.seq).max().unwrap_or(0)
        };
        let waits: Vec<(usize, u64)> =
            m.live.iter().enumerate().map(|(i, l)| (i, newest_open(m, &l.device))).collect();
        for (i, newest) in waits {
            let l = &mut m.live[i];
            l.sent = l.sent.min(newest.max(cursor_of(&m.cursors, &l.device)));
        }
        out
    }

    /// Connections whose wait is over: the messages to send them again (oldest first). One
    /// past the attempt cap is given up on (its messages wait for its next connection).
    pub(crate) fn due(&mut self, now_ms: u64, p: &MailParams) -> Vec<(ConnId, Vec<Frame>)> {
        let mut out = Vec::new();
        while let Some((due, user, conn)) = self.due.first().cloned() {
            if due > now_ms {
                break;
            }
            self.due.pop_first();
            let Some(m) = self.users.get_mut(&user) else { continue };
            let Some(i) = m.live.iter().position(|l| l.conn == conn && l.due_ms == due) else {
                continue;
            };
            let acked = cursor_of(&m.cursors, &m.live[i].device);
            let l = &m.live[i];
            if l.sent <= acked {
                continue; // acknowledged meanwhile
            }
            if l.attempts >= p.attempts {
                self.counts.gave_up += 1;
                continue;
            }
            let frames: Vec<Frame> = m
                .entries
                .iter()
                .filter(|e| {
                    e.seq > acked
                        && e.seq <= l.sent
                        && e.expires_ms > now_ms
                        && for_device(e, &l.device)
                })
                .map(|e| e.frame.clone())
                .collect();
            let l = &mut m.live[i];
            l.attempts += 1;
            l.due_ms = now_ms + p.ack_timeout_ms.saturating_mul(1 << l.attempts.min(20));
            self.due.insert((l.due_ms, user.clone(), conn));
            if !frames.is_empty() {
                self.counts.redelivered += frames.len() as u64;
                out.push((conn, frames));
            }
        }
        out
    }

    /// Drops messages past their age or `ttl`; forgets users with nothing kept, nothing
    /// connected, and no cursor moved within `cursor_ttl_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64, p: &MailParams) {
        let mut expired = 0;
        let mut freed = 0;
        let (released, marked) = (&mut self.released, &mut self.marked);
        self.users.retain(|user, m| {
            let mut lost = m.lost_upto;
            m.entries.retain(|e| {
                let keep = e.expires_ms > now_ms;
                if !keep {
                    freed += e.frame.bytes.len();
                    lost = lost.max(e.seq);
                    released.extend(e.rec);
                    expired += 1;
                }
                keep
            });
            if lost > m.lost_upto {
                m.lost_upto = lost;
                marked.push(user.clone());
            }
            m.bytes = m.entries.iter().map(|e| e.frame.bytes.len()).sum();
            let recent = m.cursors.iter().any(|c| c.at_ms.saturating_add(p.cursor_ttl_ms) > now_ms);
            let held_back = m.hold_ms > now_ms;
            let stay = !m.entries.is_empty() || !m.live.is_empty() || recent || held_back;
            if !stay {
                released.extend(m.cursors.iter().filter_map(|c| c.rec));
                released.extend(m.mark_rec);
            }
            stay
        });
        self.held -= freed;
        self.counts.expired += expired;
    }

    pub(crate) fn info(&self, user: &str) -> MailInfo {
        let Some(m) = self.users.get(user) else { return MailInfo::default() };
        MailInfo {
            count: m.entries.len(),
            bytes: m.bytes,
            oldest: m.entries.front().map(|e| e.seq),
            newest: m.entries.back().map(|e| e.seq),
            cursors: m.cursors.iter().map(|c| (c.device.clone(), c.acked)).collect(),
        }
    }

    /// Empties a user's mailbox (its cursors stay); returns how many messages went.
    pub(crate) fn clear(&mut self, user: &str) -> usize {
        let Some(m) = self.users.get_mut(user) else { return 0 };
        let n = m.entries.len();
        self.held -= m.bytes;
        if let Some(last) = m.entries.back().map(|e| e.seq) {
            if last > m.lost_upto || last > m.gone_upto {
                m.lost_upto = m.lost_upto.max(last);
                m.gone_upto = m.gone_upto.max(last);
                self.marked.push(Arc::from(user));
            }
        }
        for e in m.entries.drain(..) {
            m.hold_ms = m.hold_ms.max(e.expires_ms);
            self.released.extend(e.rec);
        }
        m.bytes = 0;
        n
    }

    /// The device's cursor is now written down as `rec` (the one it replaces is let go).
    pub(crate) fn cursor_written(&mut self, user: &str, device: &str, rec: RecordId) {
        let c = self
            .users
            .get_mut(user)
            .and_then(|m| m.cursors.iter_mut().find(|c| &*c.device == device));
        match c {
            Some(c) => self.released.extend(c.rec.replace(rec)),
            None => self.released.push(rec),
        }
    }

    /// What a mark for `user` says: its epoch is the caller's; the highest seq dropped.
    /// The user's mark: the highest seq dropped unsettled, and the seq up to which every
    /// message was let go.
    pub(crate) fn marks(&self, user: &str) -> (u64, u64) {
        self.users.get(user).map_or((0, 0), |m| (m.lost_upto, m.gone_upto))
    }

    /// The user's mark is now written down as `rec` (the one it replaces is let go).
    pub(crate) fn mark_written(&mut self, user: &str, rec: RecordId) {
        match self.users.get_mut(user) {
            Some(m) => self.released.extend(m.mark_rec.replace(rec)),
            None => self.released.push(rec),
        }
    }

    /// Replay: a mark read back.
    pub(crate) fn restore_mark(
        &mut self,
        user: &Arc<str>,
        (lost_upto, gone_upto): (u64, u64),
        rec: RecordId,
    ) {
        let m = self.users.entry(user.clone()).or_default();
        m.lost_upto = m.lost_upto.max(lost_upto);
        m.gone_upto = m.gone_upto.max(gone_upto);
        // What was let go and read back before the mark goes again.
        while m.entries.front().is_some_and(|e| e.seq <= m.gone_upto) {
            let Some(e) = m.entries.pop_front() else { break };
            m.bytes -= e.frame.bytes.len();
            m.hold_ms = m.hold_ms.max(e.expires_ms);
            self.held -= e.frame.bytes.len();
            self.released.extend(e.rec);
        }
        self.released.extend(m.mark_rec.replace(rec));
    }

    /// Replay: a cursor read back. It only moves the device's cursor: what it settles is
    /// settled once every cursor is known ([`Mailboxes::settle_replayed`]), since a cursor
    /// copied forward comes after newer ones of other devices (settling on each would let
    /// go a message a device read later has not acknowledged).
    pub(crate) fn restore_cursor(
        &mut self,
        user: &Arc<str>,
        device: &Arc<str>,
        acked: u64,
        at_ms: u64,
        rec: RecordId,
        p: &MailParams,
    ) {
        let m = self.users.entry(user.clone()).or_default();
        match m.cursors.iter_mut().find(|c| c.device == *device) {
            Some(c) => {
                c.acked = c.acked.max(acked);
                c.at_ms = c.at_ms.max(at_ms);
            }
            None => {
                m.cursors.push(Cursor { device: device.clone(), acked, at_ms, rec: None });
                if m.cursors.len() > p.devices {
                    if let Some(i) =
                        m.cursors.iter().enumerate().min_by_key(|(_, c)| c.at_ms).map(|(i, _)| i)
                    {
                        let gone = m.cursors.swap_remove(i);
                        self.released.extend(gone.rec);
                    }
                }
            }
        }
        self.cursor_written(user, device, rec);
    }

    /// Replay is over: every user's messages its cursors settle are let go (as the acks
    /// did before the restart; no `cancel` is sent for them).
    pub(crate) fn settle_replayed(&mut self) {
        let mut freed = 0;
        for m in self.users.values_mut() {
            // A first_ack message is settled by any device's ack.
            let newest = m.cursors.iter().map(|c| c.acked).max().unwrap_or(0);
            freed += m.settle(newest, &mut self.released).1;
        }
        self.held -= freed;
    }

    /// Replay: everything of a user's stream before this epoch is stale (it was forgotten
    /// and began again); its records are let go.
    pub(crate) fn forget(&mut self, user: &str) {
        if let Some(m) = self.users.remove(user) {
            self.held -= m.bytes;
            self.released.extend(m.entries.into_iter().filter_map(|e| e.rec));
            self.released.extend(m.cursors.into_iter().filter_map(|c| c.rec));
            self.released.extend(m.mark_rec);
        }
    }

    /// Replay damage: everything of the user's stream up to `seq` may be lost.
    pub(crate) fn mark_lost(&mut self, user: &Arc<str>, seq: u64) {
        if let Some(m) = self.users.get_mut(user) {
            if seq > m.lost_upto {
                m.lost_upto = seq;
                self.marked.push(user.clone());
            }
        }
    }

    /// Every user with anything kept (replay damage marks them all).
    pub(crate) fn users(&self) -> Vec<Arc<str>> {
        self.users.keys().cloned().collect()
    }

    /// Frame bytes all mailboxes of this shard hold.
    /// Copies forward what lives in `segments`: `write` appends each such record again (the
    /// mailbox entries, cursors and marks whose record is there) and returns its new id; the
    /// old id is released. Returns how many were written again.
    pub(crate) fn copy_forward(
        &mut self,
        segments: &[u32],
        mut write: impl FnMut(&Arc<str>, Kept<'_>) -> Option<RecordId>,
    ) -> usize {
        let there = |r: &Option<RecordId>| r.is_some_and(|r| segments.contains(&r.segment));
        let mut moved = 0;
        for (user, m) in &mut self.users {
            for e in m.entries.iter_mut().filter(|e| there(&e.rec)) {
                let k = Kept::Push {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    frame: &e.frame,
                    device: e.device.as_deref(),
                    first_ack: e.first_ack,
                };
                if let Some(new) = write(user, k) {
                    self.released.extend(e.rec.replace(new));
                    moved += 1;
                }
            }
            for c in m.cursors.iter_mut().filter(|c| there(&c.rec)) {
                let k = Kept::Cursor { device: &c.device, acked: c.acked, at_ms: c.at_ms };
                if let Some(new) = write(user, k) {
                    self.released.extend(c.rec.replace(new));
                    moved += 1;
                }
            }
            if there(&m.mark_rec) {
                let k = Kept::Mark { lost_upto: m.lost_upto, gone_upto: m.gone_upto };
                if let Some(new) = write(user, k) {
                    self.released.extend(m.mark_rec.replace(new));
                    moved += 1;
                }
            }
        }
        moved
    }

    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

fn cursor_of(cursors: &[Cursor], device: &str) -> u64 {
    cursors.iter().find(|c| &*c.device == device).map_or(0, |c| c.acked)
}

fn for_device(e: &Entry, device: &str) -> bool {
    e.device.as_deref().is_none_or(|d| d == device)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::push::msg::Priority;

    const P: MailParams =
        MailParams { ack_timeout_ms: 100, attempts: 2, devices: 2, cursor_ttl_ms: 60_000 };
    const K: Keep = Keep {
        guarantee: crate::push::history::Guarantee::Durable,
        size: 4,
        bytes: 1000,
        ttl_ms: 60_000,
    };

    fn frame(seq: u64) -> Frame {
        Frame {
            bytes: Bytes::from(format!("m{seq}")),
            priority: Priority::Normal,
            kept: true,
            meta: None,
        }
    }

    fn conn(slot: u32) -> ConnId {
        ConnId { shard: 0, slot, gen: 1 }
    }

    fn seqs(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| String::from_utf8_lossy(&f.bytes).into_owned()).collect()
    }

    #[test]
    fn unacked_messages_are_sent_again_with_backoff_up_to_the_cap_and_stop_at_the_ack() {
        let (mut m, u, phone): (Mailboxes, Arc<str>, Arc<str>) =
            (Mailboxes::new(), "u".into(), "phone".into());
        for seq in 1..=2 {
            m.put(&u, seq, frame(seq), None, false, None, 0, &K, None);
            m.sent(&u, conn(1), &phone, seq, 0, &P);
        }
        assert!(m.due(99, &P).is_empty());
        let again = m.due(100, &P);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].0, seqs(&again[0].1)), (conn(1), vec!["m1".into(), "m2".into()]));
        // Then after twice the timeout; an ack of 1 leaves 2.
        m.ack(&u, &phone, 1, 2, 150, &P);
        assert!(m.due(299, &P).is_empty());
        assert_eq!(seqs(&m.due(300, &P)[0].1), ["m2"]);
        // Past the cap: given up on, counted.
        assert!(m.due(10_000, &P).is_empty());
        assert_eq!((m.counts.redelivered, m.counts.gave_up), (3, 1));
        // The ack settles it: nothing is kept, nothing is due.
        let a = m.ack(&u, &phone, 2, 2, 10_001, &P);
        assert_eq!(a.settled, 1);
        assert_eq!(m.info("u").count, 0);
    }

    #[test]
    fn a_device_that_comes_back_gets_what_it_has_not_acknowledged_in_order() {
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        let (phone, laptop): (Arc<str>, Arc<str>) = ("phone".into(), "laptop".into());
        m.ack(&u, &phone, 0, 0, 0, &P);
        m.ack(&u, &laptop, 0, 0, 0, &P);
        for seq in 1..=3 {
            m.put(&u, seq, frame(seq), None, false, None, 10, &K, None);
        }
        m.ack(&u, &phone, 2, 3, 20, &P);
        let p = m.joined(&u, conn(5), &phone, 30, &P);
        assert_eq!((seqs(&p.frames), p.acked, p.lost), (vec!["m3".to_string()], 2, false));
        let p = m.joined(&u, conn(6), &laptop, 30, &P);
        assert_eq!(seqs(&p.frames), ["m1", "m2", "m3"]);
        // Settled once every device with a cursor has it.
        m.ack(&u, &laptop, 3, 3, 40, &P);
        assert_eq!(m.info("u").count, 1, "the phone still has 3 to acknowledge");
        m.ack(&u, &phone, 3, 3, 40, &P);
        assert_eq!(m.info("u").count, 0);
        // A device never seen gets what is still kept; an ack past the stream's end is clamped.
        m.put(&u, 4, frame(4), None, false, None, 50, &K, None);
        let new: Arc<str> = "tablet".into();
        assert_eq!(seqs(&m.joined(&u, conn(7), &new, 60, &P).frames), ["m4"]);
        m.ack(&u, &new, 99, 4, 70, &P);
        assert!(m.info("u").cursors.contains(&(new.clone(), 4)));
    }

    #[test]
    fn caps_and_ttl_drop_the_oldest_count_it_and_a_device_behind_them_is_told() {
        let (mut m, u, phone) =
            (Mailboxes::new(), Arc::<str>::from("u"), Arc::<str>::from("phone"));
        m.ack(&u, &phone, 0, 0, 0, &P);
        for seq in 1..=6 {
            m.put(&u, seq, frame(seq), None, false, None, 0, &K, None);
        }
        assert_eq!((m.counts.evicted, m.info("u").oldest), (2, Some(3)));
        let p = m.joined(&u, conn(1), &phone, 1, &P);
        assert!(p.lost, "seqs 1 and 2 are gone unacknowledged");
        assert_eq!(seqs(&p.frames), ["m3", "m4", "m5", "m6"]);
        let laptop: Arc<str> = "laptop".into();
        let p = m.joined(&u, conn(3), &laptop, 1, &P);
        assert!(p.lost, "a device never seen may have been sent 1 and 2 too");
        assert_eq!(seqs(&p.frames), ["m3", "m4", "m5", "m6"]);
        m.left("u", conn(3));
        // A message's own ttl, shorter than the age cap.
        m.put(&u, 7, frame(7), None, false, Some(10), 100, &K, None);
        assert_eq!(seqs(&m.joined(&u, conn(2), &phone, 109, &P).frames).last().unwrap(), "m7");
        assert_ne!(seqs(&m.joined(&u, conn(2), &phone, 110, &P).frames).last().unwrap(), "m7");
        m.expire(110, &P);
        assert_eq!((m.counts.expired, m.info("u").newest), (1, Some(6)));
        m.left("u", conn(1));
        m.left("u", conn(2));
        m.ack(&u, &phone, 0, 7, 50_000, &P);
        m.expire(60_001, &P);
        assert_eq!(m.info("u").count, 0);
        assert_eq!(m.held(), 0);
        assert!(m.holds("u"), "its cursor is recent");
        m.expire(120_001, &P);
        assert!(!m.holds("u"), "nothing kept, nothing connected, the cursor old: forgotten");
    }

    #[test]
    fn first_ack_settles_for_every_device_and_the_others_are_told_to_cancel() {
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        let (phone, laptop): (Arc<str>, Arc<str>) = ("phone".into(), "laptop".into());
        m.put(&u, 1, frame(1), None, true, None, 0, &K, None);
        m.sent(&u, conn(1), &phone, 1, 0, &P);
        m.sent(&u, conn(2), &laptop, 1, 0, &P);
        let a = m.ack(&u, &phone, 1, 1, 10, &P);
        assert_eq!((a.cancels, a.settled), (vec![(conn(2), 1)], 1));
        assert!(m.due(1000, &P).is_empty(), "not redelivered to the laptop");
        assert!(m.joined(&u, conn(3), &laptop, 1000, &P).frames.is_empty());
    }

    #[test]
    fn a_message_for_one_device_waits_for_that_device_only() {
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        let (phone, laptop): (Arc<str>, Arc<str>) = ("phone".into(), "laptop".into());
        m.put(&u, 1, frame(1), Some(phone.clone()), false, None, 0, &K, None);
        assert!(m.joined(&u, conn(1), &laptop, 1, &P).frames.is_empty());
        assert_eq!(seqs(&m.joined(&u, conn(2), &phone, 1, &P).frames), ["m1"]);
        m.ack(&u, &laptop, 1, 1, 2, &P);
        assert_eq!(m.info("u").count, 1);
        m.ack(&u, &phone, 1, 1, 3, &P);
        assert_eq!(m.info("u").count, 0);
        // Cursors are capped per user: the least recently acknowledging device goes.
        let tablet: Arc<str> = "tablet".into();
        m.ack(&u, &tablet, 1, 1, 4, &P);
        let devices: Vec<Arc<str>> = m.info("u").cursors.into_iter().map(|c| c.0).collect();
        assert_eq!(devices.len(), 2);
        assert!(!devices.contains(&laptop), "{devices:?}");
    }

    fn rid(segment: u32, offset: u32) -> Option<RecordId> {
        Some(RecordId { segment, offset })
    }

    #[test]
    fn replay_keeps_seq_order_once_each_and_a_clear_mark_drops_what_it_let_go() {
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        let d: Arc<str> = "d".into();
        // 2 was copied forward past 3; then read twice (old segment still there).
        m.put(&u, 1, frame(1), None, false, None, 0, &K, rid(1, 0));
        m.put(&u, 3, frame(3), None, false, None, 0, &K, rid(2, 0));
        m.put(&u, 2, frame(2), None, false, None, 0, &K, rid(3, 0));
        m.put(&u, 2, frame(2), None, false, None, 0, &K, rid(3, 9));
        assert_eq!(seqs(&m.joined(&u, conn(1), &d, 1, &P).frames), ["m1", "m2", "m3"]);
        assert_eq!(m.info("u").count, 3);
        assert_eq!(m.released, [RecordId { segment: 3, offset: 0 }], "the older read goes");
        m.released.clear();
        // A DELETE lets 1..3 go: its mark says so, and a replay of their records plus the
        // mark brings none of them back.
        assert_eq!(m.clear("u"), 3);
        assert_eq!(m.marks("u"), (3, 3));
        let mut r = Mailboxes::new();
        for seq in 1..=3 {
            r.put(&u, seq, frame(seq), None, false, None, 0, &K, rid(1, seq as u32));
        }
        r.restore_mark(&u, (3, 3), RecordId { segment: 2, offset: 0 });
        assert_eq!((r.info("u").count, r.held()), (0, 0));
        assert_eq!(r.released.len(), 3);
        r.put(&u, 2, frame(2), None, false, None, 0, &K, rid(1, 2));
        assert_eq!(r.info("u").count, 0, "a record read after the mark stays gone too");
        r.put(&u, 4, frame(4), None, false, None, 0, &K, rid(2, 1));
        assert_eq!(r.info("u").count, 1);
    }

    #[test]
    fn a_replayed_cursor_read_before_an_older_one_settles_nothing_the_older_device_lacks() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        for seq in 1..=4 {
            m.put(&u, seq, frame(seq), None, false, None, 0, &K, rid(1, seq as u32));
        }
        // b acked 4 after a acked 2; a's cursor was copied forward, so it is read last.
        m.restore_cursor(&u, &b, 4, 20, RecordId { segment: 2, offset: 0 }, &P);
        m.restore_cursor(&u, &a, 2, 10, RecordId { segment: 3, offset: 0 }, &P);
        m.settle_replayed();
        assert_eq!(m.info("u").count, 2, "3 and 4 wait for a");
        assert_eq!(seqs(&m.joined(&u, conn(1), &a, 1, &P).frames), ["m3", "m4"]);
        assert_eq!(m.held(), 4);
    }

    #[test]
    fn a_cleared_or_settled_user_keeps_its_mark_and_cursors_until_what_they_let_go_expires() {
        let (mut m, u, d) = (Mailboxes::new(), Arc::<str>::from("u"), Arc::<str>::from("d"));
        m.put(&u, 1, frame(1), None, false, Some(5_000), 0, &K, rid(1, 0));
        assert_eq!(m.clear("u"), 1);
        m.mark_written("u", RecordId { segment: 2, offset: 0 });
        m.released.clear();
        // No entry, connection or cursor: it would go at once, and a replay of message 1's
        // record (its segment still there) would bring it back.
        m.expire(4_999, &P);
        assert!(m.holds("u") && m.released.is_empty(), "the mark stays while 1 could come back");
        m.expire(5_000, &P);
        assert!(!m.holds("u"));
        assert_eq!(m.released, [RecordId { segment: 2, offset: 0 }], "then the mark goes");
        // Settled by an ack: the cursor stays as long as the message could come back, even
        // past the cursors' own time.
        let p = MailParams { cursor_ttl_ms: 10, ..P };
        m.put(&u, 2, frame(2), None, false, Some(8_000), 6_000, &K, rid(3, 0));
        m.ack(&u, &d, 2, 2, 6_001, &p);
        let j = m.joined(&u, conn(1), &d, 2, &p);
        assert!(j.frames.is_empty());
        m.left("u", conn(1));
        m.expire(13_999, &p);
        assert!(m.holds("u"));
        m.expire(14_000, &p);
        assert!(!m.holds("u"));
    }

    #[test]
    fn copy_forward_writes_again_what_lives_in_the_segments_and_lets_the_old_ids_go() {
        let (mut m, u) = (Mailboxes::new(), Arc::<str>::from("u"));
        let d: Arc<str> = "d".into();
        m.put(&u, 1, frame(1), None, false, None, 0, &K, rid(1, 0));
        m.put(&u, 2, frame(2), None, false, None, 0, &K, rid(2, 0));
        m.restore_cursor(&u, &d, 0, 0, RecordId { segment: 1, offset: 5 }, &P);
        m.released.clear();
        let mut next = 100;
        let mut written = Vec::new();
        let n = m.copy_forward(&[1], |_, k| {
            written.push(format!("{k:?}").split_whitespace().next().unwrap_or("").to_string());
            next += 1;
            rid(9, next)
        });
        assert_eq!((n, written), (2, vec!["Push".to_string(), "Cursor".to_string()]));
        let mut gone = m.released.clone();
        gone.sort_by_key(|r| r.offset);
        assert_eq!(gone, [RecordId { segment: 1, offset: 0 }, RecordId { segment: 1, offset: 5 }]);
        assert_eq!(m.copy_forward(&[1], |_, _| None), 0, "nothing lives there now");
    }
}
