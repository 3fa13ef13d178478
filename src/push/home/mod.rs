//! The home-shard service: what a shard knows and decides for the users, channels and the
//! broadcast stream homed on it. It keeps their directories (who is connected where, how many
//! subscribers each shard holds) and numbers their streams, and answers requests by fanning
//! out deliveries, kicks and query replies. A pure state machine: messages and the time in,
//! [`Effect`]s out; the shard sends what it returns.

use std::sync::Arc;

use crate::proto::CloseReason;

use super::delivery::encode_at;
use super::directory::{ChannelDirectory, Policy, UserConn, UserDirectory};
use super::effect::{Effect, Effects, Expected};
use super::ids::ConnId;
use super::journal::{Journal, Rec};
use super::mailbox::{MailParams, Mailboxes, NO_DEVICE};
use super::msg::{ConnInfo, Frame, MailCatchUp, Meta, Payload, Priority, ShardMsg, Target};

mod compact;
mod replay;
mod waits;

use super::report::{ReportPart, Totals};
use super::streams::{Position, StreamKey, Streams};
use waits::AckWaits;

/// A sealed turn: the log commit that holds it (its number, or why it failed), and the
/// reports that wait for it.
pub(crate) type Sealed = (Result<Option<u64>, String>, Vec<ReportPart>);

/// How the home service behaves, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HomeParams {
    /// A new connection of a user's device replaces the device's older ones.
    pub(crate) replace: bool,
    /// `policy: active` reaches connections active within this window.
    pub(crate) active_window_ms: u64,
    /// Shards on this node.
    pub(crate) shards: usize,
    /// Durable user streams' redelivery clock and device cursors.
    pub(crate) mail: MailParams,
}

#[derive(Debug)]
pub(crate) struct Home {
    users: UserDirectory,
    channels: ChannelDirectory,
    /// Numbering of the streams homed here: the one owner of their positions.
    streams: Streams,
    /// Durable user streams' mailboxes, cursors and redelivery.
    mail: Mailboxes,
    /// Where durable messages and cursors are written (`None`: memory only, `--data-dir none`).
    journal: Option<Box<dyn Journal>>,
    /// Reports of durable pushes written this turn: they complete once the turn's commit is
    /// durable (the shard holds them until then).
    held: Vec<ReportPart>,
    /// Durable pushes whose report waits for the devices' acks (`wait_ack_ms`).
    waits: AckWaits,
    /// When the log is next asked for segments to copy forward.
    next_copy_ms: u64,
    p: HomeParams,
}

impl Home {
    pub(crate) fn new(p: HomeParams, streams: Streams) -> Home {
        Home {
            users: UserDirectory::default(),
            channels: ChannelDirectory::default(),
            streams,
            mail: Mailboxes::new(),
            journal: None,
            held: Vec::new(),
            waits: AckWaits::new(),
            next_copy_ms: 0,
            p,
        }
    }

    /// Writes durable user streams to `journal` from now on.
    pub(crate) fn with_journal(mut self, journal: Box<dyn Journal>) -> Home {
        self.journal = Some(journal);
        self
    }

    /// Ends the turn for the log: the commit that holds this turn's records, with the
    /// reports that wait for it. `None` without a log or when nothing was written.
    pub(crate) fn seal(&mut self) -> Option<Sealed> {
        let j = self.journal.as_mut()?;
        let sealed = j.seal();
        if matches!(sealed, Ok(None)) && self.held.is_empty() {
            return None;
        }
        Some((sealed, std::mem::take(&mut self.held)))
    }

    /// Writes what the mailboxes let go and the marks they owe.
    fn settle_log(&mut self, now_ms: u64) {
        let Some(j) = self.journal.as_mut() else {
            self.mail.released.clear();
            self.mail.marked.clear();
            return;
        };
        for id in self.mail.released.drain(..) {
            j.release(id);
        }
        let mut marked = std::mem::take(&mut self.mail.marked);
        marked.sort_unstable();
        marked.dedup();
        for user in marked {
            let epoch = self.streams.position(&StreamKey::User(user.clone()), now_ms).epoch;
            let (lost_upto, gone_upto) = self.mail.marks(&user);
            let mut body = Vec::new();
            let r = Rec::Mark { user: &user, epoch, lost_upto, gone_upto, at_ms: now_ms };
            let kind = r.encode(&mut body);
            if let Some(id) = j.append(kind, &body) {
                self.mail.mark_written(&user, id);
            }
        }
        for id in self.mail.released.drain(..) {
            j.release(id);
        }
    }

    /// Numbers the next message of `key`, encodes it once and keeps it if the stream keeps
    /// history: the frame every recipient shares.
    fn append(
        &mut self,
        key: &StreamKey,
        now_ms: u64,
        payload: &Payload,
        priority: Priority,
        meta: Option<Arc<Meta>>,
    ) -> Frame {
        let stamp = (priority, meta.clone());
        let ack = self.streams.keep(key).durable();
        let (_, bytes) = self
            .streams
            .append_with(key, now_ms, stamp, |pos| encode_at(&key.wire(), pos, ack, payload));
        // A durable message that does not fit an outbox is redelivered: late, not lost.
        Frame { bytes, priority, kept: ack || self.streams.recoverable(key), meta }
    }

    /// A push to a durable user stream: numbered, kept in the user's mailbox until it is
    /// settled, and sent to the connections the policy picks (none: `stored`).
    #[allow(clippy::too_many_arguments)] // reason: the push's fields, as PushUser has them
    fn push_durable(
        &mut self,
        user: Arc<str>,
        device: Option<Arc<str>>,
        policy: Policy,
        payload: &Payload,
        (priority, meta): (Priority, Option<Arc<Meta>>),
        (report, wait_ack_ms): (&ReportPart, u32),
        now_ms: u64,
        out: &mut Effects,
    ) {
        let window = self.p.active_window_ms;
        let targets = self.users.targets(&user, device.as_deref(), policy, now_ms, window);
        let key = StreamKey::User(user.clone());
        let keep = self.streams.keep(&key);
        let ttl =
            meta.as_ref().filter(|m| m.expires_ms > 0).map(|m| m.expires_ms.saturating_sub(now_ms));
        let frame = self.append(&key, now_ms, payload, priority, meta);
        let seq = self.streams.position(&key, now_ms).seq;
        let first_ack = policy == Policy::FirstAck;
        let rec = match self.journal.as_mut() {
            None => None,
            Some(j) => {
                let epoch = self.streams.position(&key, now_ms).epoch;
                let ttl_ms_at = ttl.map_or(0, |t| now_ms.saturating_add(t));
                let r = Rec::Push {
                    user: &user,
                    epoch,
                    seq,
                    at_ms: now_ms,
                    ttl_ms_at,
                    priority: priority as u8,
                    first_ack,
                    device: device.as_deref(),
                    frame: &frame.bytes,
                };
                let mut body = Vec::with_capacity(frame.bytes.len() + 64);
                let kind = r.encode(&mut body);
                match j.append(kind, &body) {
                    Some(id) => {
                        // The API answers once the turn's commit is durable.
                        self.held.push(report.split());
                        Some(id)
                    }
                    None => {
                        report.add(Totals { unsaved: 1, ..Default::default() });
                        None
                    }
                }
            }
        };
        let target = device.clone();
        self.mail.put(&user, seq, frame.clone(), device, first_ack, ttl, now_ms, &keep, rec);
        self.settle_log(now_ms);
        let mut sent = Vec::new();
        match targets {
            None => report.add(Totals { stored: 1, ..Default::default() }),
            Some(mut conns) => {
                for c in &conns {
                    let dev = self.device_of(&user, *c);
                    self.mail.sent(&user, *c, &dev, seq, now_ms, &self.p.mail);
                    sent.push(dev);
                }
                deliver_to(&mut conns, &frame, report, out);
            }
        }
        if wait_ack_ms > 0 {
            let deadline = now_ms.saturating_add(u64::from(wait_ack_ms));
            let w = waits::Wait { seq, deadline_ms: deadline, first_ack, device: target };
            self.waits.add(&user, w, sent, report.split());
        }
    }

    /// The device key of one of a user's connections (`""` without a device).
    fn device_of(&self, user: &str, conn: ConnId) -> Arc<str> {
        self.users
            .get(user)
            .and_then(|e| e.conns.iter().find(|c| c.conn == conn))
            .and_then(|c| c.device.clone())
            .unwrap_or_else(|| Arc::from(NO_DEVICE))
    }

    /// Sends what the mailboxes have due (redeliveries), each to its connection's shard.
    pub(crate) fn tick(&mut self, now_ms: u64, out: &mut Effects) {
        for (conn, frames) in self.mail.due(now_ms, &self.p.mail) {
            let msg = ShardMsg::Mail { conn, frames };
            out.push_back(Effect::Update { shard: usize::from(conn.shard), msg });
        }
        let over = self.waits.due(now_ms);
        self.answer_waits(over);
    }

    /// Reports whose acknowledgement wait ended: they complete with the turn's commit (which
    /// holds the cursors the acks moved), at once without a log.
    fn answer_waits(&mut self, parts: Vec<ReportPart>) {
        if self.journal.is_some() {
            self.held.extend(parts);
        }
    }

    /// Pushes whose report waits for acks.
    pub(crate) fn ack_waits(&self) -> usize {
        self.waits.len()
    }

    /// Numbers a channel message, keeps it where the channel keeps history, and hands it to
    /// every shard with subscribers; its seq, unless an ephemeral channel nobody follows
    /// (nothing to keep, nothing numbered).
    fn publish(
        &mut self,
        channel: &Arc<str>,
        payload: &Payload,
        (priority, meta): (Priority, Option<Arc<Meta>>),
        report: &ReportPart,
        now_ms: u64,
        out: &mut Effects,
    ) -> Option<u64> {
        let key = StreamKey::Channel(channel.clone());
        let shards = self.channels.publish(channel).unwrap_or_default();
        // Nobody listens: an ephemeral stream has nothing to keep; a recoverable one numbers
        // and keeps the message for whoever resumes.
        if shards.is_empty() && !self.streams.recoverable(&key) {
            return None;
        }
        let frame = self.append(&key, now_ms, payload, priority, meta);
        for shard in shards {
            let msg = ShardMsg::Deliver {
                target: Target::Channel(channel.clone()),
                frame: frame.clone(),
                report: report.split(),
            };
            let expected = Expected::Recipients(self.channels.count_on(channel, shard));
            out.push_back(Effect::Deliver { shard, msg, expected });
        }
        Some(self.streams.position(&key, now_ms).seq)
    }

    /// Whether a message is for the home service (rather than for local connections).
    pub(crate) fn takes(m: &ShardMsg) -> bool {
        !matches!(
            m,
            ShardMsg::Deliver { .. }
                | ShardMsg::SendConn { .. }
                | ShardMsg::Kick { .. }
                | ShardMsg::Subscribed { .. }
                | ShardMsg::Repaired { .. }
                | ShardMsg::Joined { .. }
                | ShardMsg::Mail { .. }
                | ShardMsg::Synced { .. }
                | ShardMsg::Published { .. }
        )
    }

    /// Handles a message for the home service ([`Home::takes`]); others are ignored.
    pub(crate) fn on_msg(&mut self, m: ShardMsg, now_ms: u64, out: &mut Effects) {
        match m {
            ShardMsg::UserJoined { user, device, conn, at_ms, info } => {
                let key = StreamKey::User(user.clone());
                let at = self.streams.position(&key, now_ms);
                let mail = self.streams.keep(&key).durable().then(|| {
                    let dev = device.clone().unwrap_or_else(|| Arc::from(NO_DEVICE));
                    let p = self.mail.joined(&user, conn, &dev, now_ms, &self.p.mail);
                    self.waits.joined(&user, &dev, &p.seqs);
                    Box::new(MailCatchUp { frames: p.frames, lost: p.lost })
                });
                let c = UserConn { conn, device, connected_ms: at_ms, active_ms: at_ms, info };
                let joined = ShardMsg::Joined { conn, at, mail };
                out.push_back(Effect::Update { shard: usize::from(conn.shard), msg: joined });
                for old in self.users.join(&user, c, self.p.replace) {
                    let msg = ShardMsg::Kick {
                        conns: vec![old],
                        reason: CloseReason::Replaced,
                        report: None,
                    };
                    out.push_back(Effect::Update { shard: usize::from(old.shard), msg });
                }
            }
            ShardMsg::UserLeft { user, conn } => {
                self.mail.left(&user, conn);
                self.users.leave(&user, conn);
            }
            ShardMsg::Ack { user, device, seq } => {
                let key = StreamKey::User(user.clone());
                if !self.streams.keep(&key).durable() {
                    return; // nothing to acknowledge on a stream that is not durable
                }
                let at = self.streams.position(&key, now_ms);
                let acked = self.mail.ack(&user, &device, seq, at.seq, now_ms, &self.p.mail);
                if let (true, Some(j)) = (acked.moved, self.journal.as_mut()) {
                    let mut body = Vec::new();
                    let r = Rec::Cursor {
                        user: &user,
                        device: &device,
                        epoch: at.epoch,
                        acked: seq.min(at.seq),
                        at_ms: now_ms,
                    };
                    let kind = r.encode(&mut body);
                    if let Some(id) = j.append(kind, &body) {
                        self.mail.cursor_written(&user, &device, id);
                    }
                }
                self.settle_log(now_ms);
                let settled = self.waits.acked(&user, &device, seq);
                self.answer_waits(settled);
                for (to, seq) in acked.cancels {
                    let body = crate::proto::client::cancel(&user, seq);
                    let mut v = Vec::with_capacity(body.len() + 4);
                    crate::proto::frame::encode_frame(
                        &mut v,
                        crate::proto::OpCode::Text,
                        true,
                        None,
                        &body,
                    );
                    let frame = Frame {
                        bytes: bytes::Bytes::from(v),
                        priority: Priority::High,
                        kept: false,
                        meta: None,
                    };
                    let msg = ShardMsg::Mail { conn: to, frames: vec![frame] };
                    out.push_back(Effect::Update { shard: usize::from(to.shard), msg });
                }
            }
            ShardMsg::UserActive { user, conn, at_ms } => self.users.active(&user, conn, at_ms),
            ShardMsg::Subscribe { channel, conn, since, count } => {
                if count {
                    self.channels.count(&channel, usize::from(conn.shard), 1, self.p.shards);
                }
                let key = StreamKey::Channel(channel.clone());
                let at = self.streams.position(&key, now_ms);
                let catch_up = since.map(|s| self.streams.catch_up(&key, s, now_ms));
                let msg = ShardMsg::Subscribed { conn, channel, at, catch_up };
                out.push_back(Effect::Update { shard: usize::from(conn.shard), msg });
            }
            ShardMsg::Repair { channel, conn, after } => {
                // The subscriber follows the channel, so its epoch has held since it
                // subscribed: the gap is in the current epoch.
                let key = StreamKey::Channel(channel.clone());
                let epoch = self.streams.position(&key, now_ms).epoch;
                let catch_up = self.streams.catch_up(&key, Position { epoch, seq: after }, now_ms);
                let kept = self.streams.recoverable(&key);
                let msg = ShardMsg::Repaired { conn, channel, catch_up, kept };
                out.push_back(Effect::Update { shard: usize::from(conn.shard), msg });
            }
            ShardMsg::ChannelCount { channel, shard, delta } => {
                self.channels.count(&channel, usize::from(shard), delta, self.p.shards);
            }
            ShardMsg::PushUser {
                user,
                device,
                policy,
                payload,
                priority,
                meta,
                wait_ack_ms,
                report,
            } => {
                if self.streams.keep(&StreamKey::User(user.clone())).durable() {
                    let stamp = (priority, meta);
                    let r = (&report, wait_ack_ms);
                    self.push_durable(user, device, policy, &payload, stamp, r, now_ms, out);
                    return;
                }
                let window = self.p.active_window_ms;
                let Some(mut conns) =
                    self.users.targets(&user, device.as_deref(), policy, now_ms, window)
                else {
                    report.add(Totals { offline: 1, ..Default::default() });
                    return;
                };
                let key = StreamKey::User(user);
                let frame = self.append(&key, now_ms, &payload, priority, meta);
                deliver_to(&mut conns, &frame, &report, out);
            }
            ShardMsg::Publish { channel, payload, priority, meta, report } => {
                self.publish(&channel, &payload, (priority, meta), &report, now_ms, out);
            }
            ShardMsg::ClientPublish { channel, payload, from, id, report } => {
                let seq = self.publish(
                    &channel,
                    &payload,
                    (Priority::Normal, None),
                    &report,
                    now_ms,
                    out,
                );
                let msg = ShardMsg::Published { conn: from, id, channel, seq };
                out.push_back(Effect::Update { shard: usize::from(from.shard), msg });
            }
            ShardMsg::Broadcast { payload, priority, meta, report } => {
                let frame = self.append(&StreamKey::Broadcast, now_ms, &payload, priority, meta);
                for shard in 0..self.p.shards {
                    let msg = ShardMsg::Deliver {
                        target: Target::All,
                        frame: frame.clone(),
                        report: report.split(),
                    };
                    out.push_back(Effect::Deliver {
                        shard,
                        msg,
                        expected: Expected::OpenConnections,
                    });
                }
            }
            ShardMsg::KickUser { user, reason, report } => {
                let Some(entry) = self.users.get(&user) else {
                    report.add(Totals { offline: 1, ..Default::default() });
                    return;
                };
                let mut conns: Vec<ConnId> = entry.conns.iter().map(|c| c.conn).collect();
                conns.sort_by_key(|c| c.shard);
                for group in conns.chunk_by(|a, b| a.shard == b.shard) {
                    let msg = ShardMsg::Kick {
                        conns: group.to_vec(),
                        reason: reason.clone(),
                        report: Some(report.split()),
                    };
                    out.push_back(Effect::Update { shard: usize::from(group[0].shard), msg });
                }
            }
            ShardMsg::QueryUser { user, reply } => {
                let conns = self.users.get(&user).map_or_else(Vec::new, |e| {
                    e.conns
                        .iter()
                        .map(|c| ConnInfo {
                            conn: c.conn,
                            device: c.device.clone(),
                            connected_ms: c.connected_ms,
                            active_ms: c.active_ms,
                            info: c.info.clone(),
                        })
                        .collect()
                });
                // The asker may have given up (its deadline passed); nothing is owed then.
                let _ = reply.send(conns);
            }
            ShardMsg::QueryStream { key, since, limit, reply } => {
                let _ = reply.send(self.streams.info(&key, since, limit, now_ms));
            }
            ShardMsg::QueryChannel { channel, reply } => {
                let _ = reply.send(self.channels.subscribers(&channel));
            }
            ShardMsg::QueryMailbox { user, clear, reply } => {
                let cleared = if clear { self.mail.clear(&user) } else { 0 };
                self.settle_log(now_ms);
                let durable = self.streams.keep(&StreamKey::User(user.clone())).durable();
                let _ = reply.send((self.mail.info(&user), cleared, durable));
            }
            ShardMsg::Deliver { .. }
            | ShardMsg::SendConn { .. }
            | ShardMsg::Kick { .. }
            | ShardMsg::Subscribed { .. }
            | ShardMsg::Repaired { .. }
            | ShardMsg::Joined { .. }
            | ShardMsg::Mail { .. }
            | ShardMsg::Synced { .. }
            | ShardMsg::Published { .. } => {
                debug_assert!(false, "not a home message");
            }
        }
    }

    /// Trims history to its age and forgets streams idle past their time to live that nobody
    /// follows (a followed stream keeps its epoch, so its followers' positions stay good).
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        self.mail.expire(now_ms, &self.p.mail);
        let (users, channels, mail) = (&self.users, &self.channels, &self.mail);
        self.streams.expire(now_ms, |k| match k {
            StreamKey::Channel(c) => channels.subscribers(c) > 0,
            // A mailbox's messages and cursors name the stream's seqs: it keeps its numbering.
            StreamKey::User(u) => users.get(u).is_some() || mail.holds(u),
            StreamKey::Broadcast => true,
        });
    }

    /// Frame bytes the mailboxes of this shard hold, and what they dropped and redelivered.
    pub(crate) fn mail_stats(&self) -> (usize, super::mailbox::MailCounts) {
        (self.mail.held(), self.mail.counts)
    }

    /// Frame bytes the history rings of this shard hold.
    pub(crate) fn history_bytes(&self) -> usize {
        self.streams.held()
    }
}

/// One delivery of `frame` per shard holding some of `conns`.
fn deliver_to(conns: &mut [ConnId], frame: &Frame, report: &ReportPart, out: &mut Effects) {
    conns.sort_by_key(|c| c.shard);
    for group in conns.chunk_by(|a, b| a.shard == b.shard) {
        let msg = ShardMsg::Deliver {
            target: Target::Conns(group.to_vec()),
            frame: frame.clone(),
            report: report.split(),
        };
        let expected = Expected::Recipients(group.len() as u64);
        out.push_back(Effect::Deliver { shard: usize::from(group[0].shard), msg, expected });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::push::directory::Policy;
    use crate::push::msg::{Payload, Priority};
    use crate::push::report::Report;

    fn home(shards: usize, replace: bool) -> Home {
        let mail = MailParams { ack_timeout_ms: 100, attempts: 2, devices: 4, cursor_ttl_ms: 1000 };
        let p = HomeParams { replace, active_window_ms: 1000, shards, mail };
        Home::new(p, Streams::new(7, 60_000))
    }

    fn conn(shard: u16, slot: u32) -> ConnId {
        ConnId { shard, slot, gen: 1 }
    }

    fn payload() -> Payload {
        Payload::Json(serde_json::value::RawValue::from_string("1".into()).unwrap().into())
    }

    fn joined(user: &str, c: ConnId, device: Option<&str>) -> ShardMsg {
        ShardMsg::UserJoined {
            user: user.into(),
            device: device.map(Arc::from),
            conn: c,
            at_ms: 5,
            info: None,
        }
    }

    #[test]
    fn a_push_to_a_user_goes_to_each_shard_holding_it_once() {
        let mut h = home(3, false);
        let mut out = Effects::new();
        for c in [conn(0, 1), conn(2, 4), conn(2, 5)] {
            h.on_msg(joined("u", c, None), 5, &mut out);
        }
        assert!(out
            .iter()
            .all(|e| matches!(e, Effect::Update { msg: ShardMsg::Joined { .. }, .. })));
        out.clear();
        let (report, part, _done) = Report::new(crate::clock::now());
        let msg = ShardMsg::PushUser {
            user: "u".into(),
            device: None,
            policy: Policy::All,
            payload: payload(),
            priority: Priority::Normal,
            meta: None,
            wait_ack_ms: 0,
            report: part,
        };
        h.on_msg(msg, 6, &mut out);
        let sent: Vec<(usize, Expected)> = out
            .iter()
            .map(|e| match e {
                Effect::Deliver { shard, expected, .. } => (*shard, *expected),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(sent, [(0, Expected::Recipients(1)), (2, Expected::Recipients(2))]);
        drop(out);
        assert_eq!(report.totals().offline, 0);
    }

    #[test]
    fn a_second_connection_of_a_device_kicks_the_first_when_replacing() {
        let mut h = home(2, true);
        let mut out = Effects::new();
        h.on_msg(joined("u", conn(0, 1), Some("phone")), 5, &mut out);
        h.on_msg(joined("u", conn(1, 2), Some("phone")), 5, &mut out);
        out.retain(|e| !matches!(e, Effect::Update { msg: ShardMsg::Joined { .. }, .. }));
        match out.pop_front() {
            Some(Effect::Update { shard: 0, msg: ShardMsg::Kick { conns, reason, .. } }) => {
                assert_eq!(conns, [conn(0, 1)]);
                assert_eq!(reason, CloseReason::Replaced);
            }
            e => panic!("{e:?}"),
        }
        assert!(out.is_empty());
    }

    #[test]
    fn a_channel_keeps_its_numbering_after_its_last_subscriber_leaves() {
        let mut h = home(1, false);
        let mut out = Effects::new();
        let count = |delta| ShardMsg::ChannelCount { channel: "news".into(), shard: 0, delta };
        let publish = || {
            let (_r, part, _d) = Report::new(crate::clock::now());
            ShardMsg::Publish {
                channel: "news".into(),
                payload: payload(),
                priority: Priority::Normal,
                meta: None,
                report: part,
            }
        };
        let frame_text = |out: &mut Effects| match out.pop_front() {
            Some(Effect::Deliver { msg: ShardMsg::Deliver { frame, .. }, .. }) => {
                String::from_utf8_lossy(&frame.bytes[2..]).into_owned()
            }
            e => panic!("{e:?}"),
        };
        h.on_msg(count(1), 0, &mut out);
        h.on_msg(publish(), 1, &mut out);
        assert!(frame_text(&mut out).contains("\"seq\":1"));
        h.on_msg(count(-1), 2, &mut out);
        h.on_msg(publish(), 3, &mut out);
        assert!(out.is_empty(), "nobody listens: nothing is sent");
        h.on_msg(count(1), 4, &mut out);
        h.on_msg(publish(), 5, &mut out);
        assert!(frame_text(&mut out).contains("\"seq\":2"));
    }

    #[test]
    fn durable_pushes_acks_and_drops_replay_into_the_same_mailbox_and_positions() {
        use crate::push::history::{Guarantee, Keep, Rules};
        use crate::push::journal::MemJournal;
        let keep =
            Keep { guarantee: Guarantee::Durable, size: 3, ttl_ms: 1_000_000, bytes: 1 << 20 };
        let durable = || {
            let rules = Rules { rules: Vec::new(), default: Keep::NOTHING, user_default: keep };
            let streams = Streams::with_history(7, 60_000, rules, 1 << 20);
            let mail = MailParams {
                ack_timeout_ms: 100,
                attempts: 2,
                devices: 4,
                cursor_ttl_ms: 1_000_000,
            };
            let p = HomeParams { replace: false, active_window_ms: 1000, shards: 1, mail };
            Home::new(p, streams)
        };
        let j = MemJournal::default();
        let mut a = durable().with_journal(Box::new(j.clone()));
        let mut out = Effects::new();
        let push = |h: &mut Home, out: &mut Effects, at: u64| {
            let (_r, part, _done) = Report::new(crate::clock::now());
            let msg = ShardMsg::PushUser {
                user: "u".into(),
                device: None,
                policy: Policy::All,
                payload: payload(),
                priority: Priority::Normal,
                meta: None,
                wait_ack_ms: 0,
                report: part,
            };
            h.on_msg(msg, at, out);
        };
        for t in 1..=4 {
            push(&mut a, &mut out, t);
        }
        // Four into a mailbox of three: 1 was dropped and marked.
        a.on_msg(ShardMsg::Ack { user: "u".into(), device: "d".into(), seq: 2 }, 5, &mut out);
        let (info_a, at_a) =
            (a.mail.info("u"), a.streams.position(&StreamKey::User("u".into()), 6));
        assert_eq!((info_a.count, info_a.oldest, at_a.seq), (2, Some(3), 4));
        // Replayed into a new home: the same mailbox, cursor, mark and position.
        let live = j.0.lock().unwrap().live();
        assert_eq!(live.len(), 4, "pushes 3 and 4, the cursor, the mark: {live:?}");
        let mut b = durable().with_journal(Box::new(MemJournal::default()));
        for (id, kind, body) in &live {
            assert!(b.replay(*id, *kind, body));
        }
        b.replayed(10);
        assert_eq!(b.mail.info("u"), info_a);
        assert_eq!(b.streams.position(&StreamKey::User("u".into()), 11), at_a);
        assert_eq!(b.mail.marks("u"), (1, 0), "1 was dropped unsettled: its mark came back");
    }
}
