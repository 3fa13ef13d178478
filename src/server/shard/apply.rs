//! Handling shard messages and applying effects. Home-service messages go to `push::Home`;
//! deliveries, direct sends and kicks are for this shard's connections. Whatever the session
//! and home state machines return is applied here, in order.

use std::sync::Arc;

use bytes::Bytes;

use crate::clock;
use crate::proto::client::{self, ResetReason, Stream};
use crate::proto::frame::encode_frame;
use crate::proto::CloseReason;
use crate::push::delivery::encode_message;
use crate::push::effect::{Effect, Expected};
use crate::push::home::Home;
use crate::push::ids::{home_of, ConnId};
use crate::push::index::Change;
use crate::push::msg::{Frame, Priority, ShardMsg, Target};
use crate::push::report::{ReportPart, Totals};
use crate::push::session::Session;
use crate::push::streams::{CatchUp, Position, StreamKey};

use super::super::conn::{flag, Route};
use super::super::outbox::Queued;
use super::super::overload::Action;
use super::Core;

impl Core {
    /// Handles one message from the inbox or from this shard itself.
    pub(super) fn handle(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Deliver { target, frame, report } => self.deliver(target, &frame, &report),
            ShardMsg::SendConn { conn, payload, priority, meta, report } => {
                let Some(key) = self.local(conn) else {
                    report.add(Totals { offline: 1, ..Default::default() });
                    return;
                };
                let seq = Session::next_direct_seq(&mut self.conns[key].session);
                let mut frame = encode_message(&Stream::Direct, seq, &payload, priority);
                frame.meta = meta;
                let q = self.queue_push(key, &frame);
                let t = Totals {
                    recipients: 1,
                    queued: u64::from(q.queued),
                    dropped: u64::from(!q.queued),
                    conflated: u64::from(q.conflated),
                    ..Default::default()
                };
                self.count_pushes(t);
                report.add(t);
            }
            ShardMsg::Kick { conns, reason, report } => self.kick(conns, reason, report),
            ShardMsg::Subscribed { conn, channel, at, catch_up } => {
                // Gone or closing: its Unsubscribe has already told the home.
                let Some(key) = self.local(conn) else { return };
                if matches!(catch_up, Some(CatchUp::Reset { .. })) {
                    self.counters.resets.inc();
                }
                let now = self.at();
                let (slot, p) = (&mut self.conns[key].session, &self.p.session);
                if Session::on_subscribed(
                    slot,
                    conn,
                    &channel,
                    (at, catch_up),
                    now,
                    p,
                    &mut self.effects,
                ) && self.channels.subscribe(&channel, conn.slot) == Change::Changed
                {
                    self.counters.subscriptions.inc();
                }
            }
            ShardMsg::Repaired { conn, channel, catch_up, kept } => {
                self.repaired(conn, &channel, catch_up, kept)
            }
            ShardMsg::Published { conn, id, channel, seq } => {
                if self.local(conn).is_some() {
                    self.published(conn, id, &channel, seq);
                }
            }
            ShardMsg::Joined { conn, at, mail } => {
                if let Some(key) = self.local(conn) {
                    let (slot, p) = (&mut self.conns[key].session, &self.p.session);
                    Session::on_joined(slot, conn, at, mail, p, &mut self.effects);
                }
            }
            ShardMsg::Synced { commit } => self.synced(commit),
            ShardMsg::Mail { conn, frames } => {
                if let Some(key) = self.local(conn) {
                    self.queue_mail(key, frames);
                }
            }
            home => {
                debug_assert!(Home::takes(&home));
                let now_ms = self.now_ms;
                self.home.on_msg(home, now_ms, &mut self.effects);
                self.counters.history_bytes.set(self.home.history_bytes() as u64);
            }
        }
        self.apply_effects();
    }

    fn kick(&mut self, conns: Vec<ConnId>, reason: CloseReason, report: Option<ReportPart>) {
        let mut t = Totals::default();
        for id in conns {
            match self.local(id) {
                Some(key) => {
                    t.recipients += 1;
                    t.dropped += self.close_for(key, reason.clone());
                }
                None => t.offline += 1,
            }
        }
        if let Some(r) = report {
            r.add(t);
        }
    }

    /// Applies what the state machines asked for, front to back, until none is left (applying
    /// one may add more, such as a closing session leaving its channels).
    pub(super) fn apply_effects(&mut self) {
        while let Some(e) = self.effects.pop_front() {
            match e {
                Effect::Reply { conn, body } => {
                    if let Some(key) = self.local(conn) {
                        let mut v = Vec::with_capacity(body.len() + 4);
                        encode_frame(&mut v, crate::proto::OpCode::Text, true, None, &body);
                        let lane = self.reply_lane(key);
                        self.queue_lane(key, Bytes::from(v), lane);
                    }
                }
                Effect::ReplyFrame { conn, frame } => {
                    if let Some(key) = self.local(conn) {
                        let lane = self.reply_lane(key);
                        self.queue_lane(key, frame, lane);
                    }
                }
                Effect::Welcome { conn, body } => {
                    if let Some(key) = self.local(conn) {
                        self.conns[key].clear(flag::WELCOME_PENDING);
                        self.queue_control(key, crate::proto::OpCode::Text, &body);
                    }
                }
                Effect::Subscribe { conn, channel, since, count } => {
                    let shard = home_of(&channel, self.mesh.shards());
                    let msg = ShardMsg::Subscribe { channel, conn, since, count };
                    if !self.mesh.update(shard, msg) {
                        self.counters.mesh_retries.inc();
                    }
                }
                Effect::Unsubscribe { conn, channel } => {
                    // The home counted it when asked, answered or not, so it always hears.
                    if self.channels.unsubscribe(&channel, conn.slot) == Change::Changed {
                        self.counters.subscriptions.sub(1);
                    }
                    if let Some(key) = self.local(conn) {
                        if self.conns[key].has(flag::GAPPED) {
                            self.repairs.left(conn.slot, &channel);
                            self.gaps_changed(key);
                        }
                    }
                    self.count_channel(channel, -1);
                }
                Effect::Replay { conn, stream, at, frames } => {
                    let Some(key) = self.local(conn) else { continue };
                    match stream {
                        StreamKey::Channel(ch) => {
                            self.queue_replay(key, &ch, frames);
                        }
                        other => self.queue_replay_or_reset(key, &other, at, frames),
                    }
                }
                Effect::Mail { conn, frames } => {
                    if let Some(key) = self.local(conn) {
                        self.queue_mail(key, frames);
                    }
                }
                Effect::ClientError => self.counters.client_errors.inc(),
                Effect::Upstream { backend, event } => self.call_backend(backend, event),
                Effect::ClientPublish { conn, id, channel, data } => {
                    self.client_publish(conn, id, channel, data)
                }
                Effect::Refreshed => self.counters.token_refreshes.inc(),
                Effect::RefreshDeclined => self.counters.refreshes_declined.inc(),
                Effect::Close { conn, reason } => {
                    if let Some(key) = self.local(conn) {
                        self.close_for(key, reason);
                    }
                }
                Effect::Update { shard, msg } => {
                    if !self.mesh.update(shard, msg) {
                        self.counters.mesh_retries.inc();
                    }
                }
                Effect::Deliver { shard, msg, expected } => {
                    if let Err(ShardMsg::Deliver { report, .. }) = self.mesh.deliver(shard, msg) {
                        let n = match expected {
                            Expected::Recipients(n) => n,
                            Expected::OpenConnections => {
                                self.peers.get(shard).map_or(0, |c| c.open_connections.get())
                            }
                        };
                        self.counters.inbox_full.add(n);
                        report.add(Totals { recipients: n, dropped: n, ..Default::default() });
                    }
                }
            }
        }
    }

    /// Protocol replies go in the high lane, except while the welcome is held: then in the
    /// normal lane, so the welcome (high lane, queued when it is ready) still goes first.
    fn reply_lane(&self, key: usize) -> Priority {
        if self.conns[key].has(flag::WELCOME_PENDING) {
            Priority::Normal
        } else {
            Priority::High
        }
    }

    /// Tells a channel's home how many subscribers this shard holds now.
    fn count_channel(&mut self, channel: std::sync::Arc<str>, delta: i32) {
        let shard = home_of(&channel, self.mesh.shards());
        let msg = ShardMsg::ChannelCount { channel, shard: self.id as u16, delta };
        if !self.mesh.update(shard, msg) {
            self.counters.mesh_retries.inc();
        }
    }

    /// Queues a shared frame to local connections and adds what happened to the report.
    fn deliver(&mut self, target: Target, frame: &Frame, report: &ReportPart) {
        let mut t = Totals::default();
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        match target {
            Target::Conns(ref ids) => {
                for &id in ids {
                    match self.local(id) {
                        Some(key) => slots.push(key as u32),
                        None => {
                            t.recipients += 1;
                            t.dropped += 1;
                        }
                    }
                }
            }
            Target::Channel(ref ch) => {
                if let Some(set) = self.channels.subscribers(ch) {
                    slots.extend(set.iter().copied());
                }
            }
            Target::All => slots.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.phase.is_open() && c.route == Route::Ws)
                    .map(|(k, _)| k as u32),
            ),
        }
        let channel = match &target {
            Target::Channel(ch) => Some(ch),
            _ => None,
        };
        // Whether any connection here waits for a repair (usually none: no per-recipient look).
        let gaps = channel.is_some() && self.repairs.open() > 0;
        // Overload: a frame below high priority skips the outboxes already half full. A kept
        // one comes later (gap repair, redelivery); one that is not is reported `shed`.
        let shed_above = (frame.priority != Priority::High && self.overloaded(Action::ShedNormal))
            .then_some(self.p.outbox_max_bytes / 2);
        for &slot in &slots {
            t.recipients += 1;
            let key = slot as usize;
            if let Some(ch) = channel.filter(|_| gaps) {
                if self.conns[key].has(flag::GAPPED) && self.repairs.holds(slot, ch) {
                    // Behind a gap: this message comes with its repair (or its reset).
                    t.add_lost(frame.kept);
                    continue;
                }
            }
            if let Some(limit) = shed_above {
                if self.conns[key].outbox.as_ref().is_some_and(|o| o.bytes() >= limit) {
                    self.counters.overload_shed.inc();
                    match channel.filter(|_| frame.kept) {
                        Some(ch) => {
                            self.lost(key, ch, &frame.bytes);
                            t.add_lost(true);
                        }
                        // Not on a channel: no gap repair brings it (a durable user
                        // stream's mailbox still sends it again after the ack timeout).
                        None => t.shed += 1,
                    }
                    continue;
                }
            }
            let q = self.queue_push(key, frame);
            t.conflated += u64::from(q.conflated);
            if q.queued {
                t.queued += 1;
            } else if let Some(ch) = channel.filter(|_| self.conns[key].phase.is_open()) {
                self.lost(key, ch, &frame.bytes);
                t.add_lost(frame.kept);
            } else {
                t.dropped += 1;
            }
        }
        self.scratch = slots;
        self.count_pushes(t);
        report.add(t);
        self.counters.publish_to_queued.observe(report.elapsed(clock::now()));
    }

    fn count_pushes(&self, t: Totals) {
        self.counters.pushes_queued.add(t.queued);
        self.counters.frames_out.add(t.queued);
        self.counters.pushes_dropped.add(t.dropped);
        self.counters.pushes_deferred.add(t.deferred);
    }

    /// Queues a push within the outbox caps; returns whether it was queued (the caller counts
    /// it, once per delivery rather than per recipient). Marks the connection slow when pushes
    /// are lost, and arms its slow-consumer deadline. Never removes the connection (fan-out may
    /// be iterating the channel index).
    fn queue_push(&mut self, key: usize, frame: &Frame) -> Queued {
        let (max_bytes, max_frames) = (self.p.outbox_max_bytes, self.p.outbox_max_frames);
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        if !conn.phase.is_open() {
            return Queued::default();
        }
        let ob = conn.outbox.get_or_insert_with(Default::default);
        let before = ob.bytes();
        let caps = (max_bytes, max_frames);
        let q = ob.push_bounded(frame, caps, &mut self.shed);
        let after = ob.bytes();
        if ob.is_empty() {
            conn.outbox = None;
        }
        self.counters.outbox_bytes.add(after as u64);
        self.counters.outbox_bytes.sub(before as u64);
        if q.conflated {
            self.counters.pushes_conflated.inc();
        }
        if q.evicted > 0 {
            self.counters.pushes_evicted.add(q.evicted as u64);
            let shed = std::mem::take(&mut self.shed);
            for f in &shed {
                self.shed_from(key, f);
            }
            self.shed = shed;
            self.shed.clear();
        }
        if q.queued {
            self.mark_dirty(key);
        }
        let conn = &mut self.conns[key];
        if (q.evicted > 0 || !q.queued) && !conn.has(flag::SLOW) {
            conn.set(flag::SLOW);
            conn.live.slow_since = now32;
            let d = self.now + self.p.live.slow;
            let current = conn.timer.and_then(|t| self.wheel.deadline(t));
            if current.is_none_or(|c| c > d) {
                self.arm(key, Some(d));
            }
        }
        q
    }

    /// A message of `channel` did not reach connection `key`: open (or widen) its gap there,
    /// to refill once its outbox drains.
    fn lost(&mut self, key: usize, channel: &Arc<str>, frame: &Bytes) {
        let Some((_, seq)) = client::delivered_at(frame) else { return };
        self.repairs.lost(key as u32, channel, seq);
        self.conns[key].set(flag::GAPPED);
        self.counters.gapped_connections.set(self.repairs.open() as u64);
    }

    /// A queued frame was shed to make room for a higher priority. If it is a message of a
    /// channel the connection follows, the gap opens at it, and the channel's later frames
    /// still queued go too (they come again with the repair, in order).
    fn shed_from(&mut self, key: usize, frame: &Bytes) {
        let Some((stream, seq)) = client::delivered_at(frame) else { return };
        let Some(name) = stream.strip_prefix("channel:") else { return };
        let conn = &mut self.conns[key];
        let Some(ch) = conn.session.as_ref().and_then(|s| s.channel(name)) else { return };
        let mut purged = 0;
        if let Some(ob) = conn.outbox.as_mut() {
            let before = ob.bytes();
            purged = ob.purge(
                |f| matches!(client::delivered_at(f), Some((s, q)) if s == stream && q > seq),
            );
            self.counters.outbox_bytes.sub((before - ob.bytes()) as u64);
        }
        self.counters.pushes_deferred.add(purged as u64);
        self.lost(key, &ch, frame);
    }

    /// Queues frames of `channel` a connection missed, in order, within the outbox caps. What
    /// does not fit opens a gap, refilled from history once the outbox drains.
    fn queue_replay(&mut self, key: usize, channel: &Arc<str>, frames: Vec<Frame>) -> u64 {
        let mut queued = 0;
        for frame in frames {
            if self.queue_push(key, &frame).queued {
                queued += 1;
            } else {
                self.lost(key, channel, &frame.bytes);
                break;
            }
        }
        self.counters.replayed.add(queued);
        self.counters.frames_out.add(queued);
        queued
    }

    /// Frames of a durable user stream (its unacknowledged messages, redeliveries, a
    /// `cancel`): queued in order within the outbox caps; what does not fit is sent again
    /// when its ack does not come (counted as deferred: late, not lost).
    fn queue_mail(&mut self, key: usize, frames: Vec<Frame>) {
        let mut queued = 0;
        let n = frames.len() as u64;
        for frame in frames {
            if !self.queue_push(key, &frame).queued {
                break;
            }
            queued += 1;
        }
        self.counters.replayed.add(queued);
        self.counters.frames_out.add(queued);
        self.counters.pushes_deferred.add(n - queued);
    }

    /// A replay of a stream that has no gap repair: what does not fit is said right behind
    /// what was queued (`reset outbox_full`, same lane, outside the caps).
    fn queue_replay_or_reset(
        &mut self,
        key: usize,
        stream: &StreamKey,
        at: Position,
        frames: Vec<Frame>,
    ) {
        let mut queued = 0;
        for frame in frames {
            if self.queue_push(key, &frame).queued {
                queued += 1;
            } else {
                let body = client::reset(&stream.wire(), at, ResetReason::OutboxFull);
                let mut v = Vec::with_capacity(body.len() + 4);
                encode_frame(&mut v, crate::proto::OpCode::Text, true, None, &body);
                self.queue_lane(key, Bytes::from(v), Priority::Normal);
                self.counters.replay_overflows.inc();
                break;
            }
        }
        self.counters.replayed.add(queued);
        self.counters.frames_out.add(queued);
    }

    /// The home answered a gap's repair: queue what was missed, or tell the client it is gone
    /// (a channel that keeps history then closes the connection 4002: it fell behind its ring).
    fn repaired(&mut self, conn: ConnId, channel: &Arc<str>, catch_up: CatchUp, kept: bool) {
        let Some(key) = self.local(conn) else { return };
        if self.repairs.answered(conn.slot, channel).is_none() {
            return;
        }
        self.gaps_changed(key);
        match catch_up {
            CatchUp::Replay { frames, .. } => {
                self.counters.gap_repairs.inc();
                let n = self.queue_replay(key, channel, frames);
                self.counters.gap_repaired.add(n);
            }
            CatchUp::Reset { at, reason } => {
                self.counters.gap_resets.inc();
                let body = client::reset(&Stream::Channel(channel), at, reason);
                let mut v = Vec::with_capacity(body.len() + 4);
                encode_frame(&mut v, crate::proto::OpCode::Text, true, None, &body);
                let lane = self.reply_lane(key);
                self.queue_lane(key, Bytes::from(v), lane);
                if kept {
                    self.close_for(key, CloseReason::SlowConsumer);
                }
            }
        }
    }

    /// After a gap closed or went: the connection's flag and the gauge follow `Repairs`.
    fn gaps_changed(&mut self, key: usize) {
        if !self.repairs.any(key as u32) {
            self.conns[key].clear(flag::GAPPED);
        }
        self.counters.gapped_connections.set(self.repairs.open() as u64);
    }
}
