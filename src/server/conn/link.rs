//! The transport seam: the byte path between a connection's socket and its WebSocket codec.
//! The shard does every recv and sendmsg into buffers it owns; a link only transforms bytes on
//! the way. A plain link passes bytes through. A TLS link lives in the shard's side map by slot
//! (`Core::links`, flagged `flag::TLS` on the connection), so a plain connection's slab entry
//! holds nothing of it (`Conn` is the same size with wss as without). A TLS link (rustls' unbuffered API) decrypts what the shard read, in
//! the shard's read buffer, and seals what the outbox holds into records; it keeps only a
//! partial record while one is partial and the ciphertext the socket has not taken yet.

use std::io::{self, IoSlice};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, UnbufferedStatus,
};
use rustls::ServerConfig;

/// Largest plaintext sealed into one record.
const RECORD: usize = 16 * 1024;

/// How a connection's bytes travel.
#[derive(Debug, Default)]
pub(crate) enum Link {
    /// Cleartext: what is read is what the codec sees.
    #[default]
    Plain,
    /// TLS (boxed: the map's entries stay small).
    Tls(Box<TlsLink>),
}

/// A wss connection's TLS state.
pub(crate) struct TlsLink {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record not yet whole.
    partial: Vec<u8>,
    /// Ciphertext to send (handshake flights, sealed records the socket refused), in order.
    out: Vec<u8>,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// We sent ours.
    notified: bool,
    /// What of `partial` and `out` the shard's `input_bytes` gauge counts.
    counted: usize,
}

impl std::fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLink")
            .field("partial", &self.partial.len())
            .field("out", &self.out.len())
            .finish()
    }
}

/// What reading through a link gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Read {
    /// The plaintext now in the buffer ends here (it starts at 0: what was kept, then what
    /// was just decrypted).
    pub(crate) end: usize,
    /// The peer ended its side (TLS close_notify): no more plaintext will come.
    pub(crate) closed: bool,
}

/// A TLS failure: a bad record or an alert. The connection is closed.
#[derive(Debug)]
pub(crate) struct TlsError(pub(crate) rustls::Error);

fn grow(out: &mut Vec<u8>, used: usize, need: usize) {
    if out.len() < used + need {
        out.resize(used + need, 0);
    }
}

impl TlsLink {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<TlsLink, rustls::Error> {
        Ok(TlsLink {
            conn: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            out: Vec::new(),
            peer_closed: false,
            notified: false,
            counted: 0,
        })
    }
}

impl Link {
    /// The TLS link's partial record, copied to the front of `space` (the shard reads new bytes
    /// after it); how many bytes.
    pub(crate) fn take_partial(&mut self, space: &mut [u8]) -> usize {
        match self {
            Link::Plain => 0,
            Link::Tls(t) => {
                let n = t.partial.len().min(space.len());
                space[..n].copy_from_slice(&t.partial[..n]);
                t.partial.drain(..n);
                if t.partial.is_empty() {
                    t.partial = Vec::new();
                }
                n
            }
        }
    }

    /// Gives back a partial record [`Link::take_partial`] lent when nothing new was read.
    pub(crate) fn put_back_partial(&mut self, bytes: &[u8]) {
        if let Link::Tls(t) = self {
            if !bytes.is_empty() {
                let mut v = bytes.to_vec();
                v.extend_from_slice(&t.partial);
                t.partial = v;
            }
        }
    }

    /// Turns bytes just read (`buf[start..end]`, after `start` bytes of plaintext kept from
    /// before) into plaintext for the codec, in place: on return `buf[..read.end]` is plaintext.
    /// `scratch` is the shard's, lent for the records' plaintext.
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        start: usize,
        end: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<Read, TlsError> {
        let t = match self {
            Link::Plain => return Ok(Read { end, closed: false }),
            Link::Tls(t) => t,
        };
        scratch.clear();
        let mut at = start;
        loop {
            let UnbufferedStatus { mut discard, state } =
                t.conn.process_tls_records(&mut buf[at..end]);
            let state = state.map_err(TlsError)?;
            let mut more = true;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let AppDataRecord { discard: d, payload, .. } = rec.map_err(TlsError)?;
                        discard += d;
                        scratch.extend_from_slice(payload);
                    }
                }
                ConnectionState::ReadEarlyData(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let AppDataRecord { discard: d, .. } = rec.map_err(TlsError)?;
                        discard += d;
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode_into(&mut t.out, &mut e),
                // The flight is in `out`; the shard sends it with the next flush, in order.
                ConnectionState::TransmitTlsData(x) => x.done(),
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    more = false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    t.peer_closed = true;
                    more = false;
                }
                _ => more = false,
            }
            at += discard;
            if !more {
                break;
            }
        }
        // What is left is a record not yet whole: kept until the rest arrives.
        if at < end {
            t.partial.extend_from_slice(&buf[at..end]);
        }
        let n = scratch.len();
        buf[start..start + n].copy_from_slice(scratch);
        Ok(Read { end: start + n, closed: t.peer_closed })
    }

    /// TLS: seals close_notify and sends it with whatever is still held, best effort (the
    /// connection is ending: a full socket loses it, and the peer sees the TCP close alone).
    pub(crate) fn close_notify(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) {
        let Link::Tls(t) = self else { return };
        if t.notified {
            return;
        }
        t.notified = true;
        if let ConnectionState::WriteTraffic(mut w) =
            match t.conn.process_tls_records(&mut []).state {
                Ok(s) => s,
                Err(_) => return,
            }
        {
            let used = t.out.len();
            grow(&mut t.out, used, 64);
            match w.queue_close_notify(&mut t.out[used..]) {
                Ok(n) => t.out.truncate(used + n),
                Err(_) => t.out.truncate(used),
            }
        }
        let _ = self.flush_output(&mut send);
    }

    /// Whether the link holds ciphertext the socket has not taken.
    /// The TLS bytes held now (a partial record, ciphertext not yet sent) are what is counted
    /// from here on: returns (what was counted, what is now).
    pub(crate) fn recount(&mut self) -> (usize, usize) {
        match self {
            Link::Plain => (0, 0),
            Link::Tls(t) => {
                let now = t.partial.len() + t.out.len();
                (std::mem::replace(&mut t.counted, now), now)
            }
        }
    }

    /// What the gauge counts for this link.
    pub(crate) fn counted(&self) -> usize {
        match self {
            Link::Plain => 0,
            Link::Tls(t) => t.counted,
        }
    }

    pub(crate) fn has_output(&self) -> bool {
        matches!(self, Link::Tls(t) if !t.out.is_empty())
    }

    /// Sends what the link holds; `Ok(true)` once nothing is left.
    pub(crate) fn flush_output(
        &mut self,
        send: &mut impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        let Link::Tls(t) = self else { return Ok(true) };
        while !t.out.is_empty() {
            match send(&[IoSlice::new(&t.out)]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    t.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        t.out = Vec::new();
        Ok(true)
    }

    /// Writes queued plaintext through `send` (the socket's gather write); returns how much
    /// plaintext was taken. TLS seals it into records of up to 16 KiB (several frames to a
    /// record) and sends them in one write; what the socket refuses stays in the link, and the
    /// plaintext counts as taken.
    pub(crate) fn write(
        &mut self,
        plaintext: &[IoSlice<'_>],
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if let Link::Plain = self {
            return send(plaintext);
        }
        if !self.flush_output(&mut send)? {
            return Ok(0);
        }
        let Link::Tls(t) = self else { return Ok(0) };
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (record, sealed) = &mut *scratch;
            sealed.clear();
            let mut taken = 0;
            let mut slices = plaintext.iter().map(|s| &s[..]);
            let mut rest: &[u8] = &[];
            loop {
                // Fill one record's plaintext from the slices (several frames to a record).
                record.clear();
                while record.len() < RECORD {
                    if rest.is_empty() {
                        match slices.next() {
                            Some(s) => rest = s,
                            None => break,
                        }
                        continue;
                    }
                    let k = rest.len().min(RECORD - record.len());
                    record.extend_from_slice(&rest[..k]);
                    rest = &rest[k..];
                }
                if record.is_empty() {
                    break;
                }
                if !seal(t, record, sealed)? {
                    // Not writable yet (the handshake is not done): nothing more is taken.
                    break;
                }
                taken += record.len();
            }
            // One write from the shard's scratch; only what the socket refuses is kept.
            let mut sent = 0;
            while sent < sealed.len() {
                match send(&[IoSlice::new(&sealed[sent..])]) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if sent < sealed.len() {
                t.out.extend_from_slice(&sealed[sent..]);
            }
            // A scratch that grew for one large write does not stay large.
            if sealed.capacity() > 4 * RECORD {
                *sealed = Vec::new();
            }
            if record.capacity() > 2 * RECORD {
                *record = Vec::new();
            }
            Ok(taken)
        })
    }
}

thread_local! {
    /// Each shard thread's buffers for sealing: one record's plaintext, and the records sealed
    /// by one write. Reused, so a write allocates nothing.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Appends a handshake message rustls wants sent to `out`.
fn encode_into<D>(out: &mut Vec<u8>, e: &mut rustls::unbuffered::EncodeTlsData<'_, D>) {
    let used = out.len();
    grow(out, used, 1024);
    loop {
        match e.encode(&mut out[used..]) {
            Ok(n) => {
                out.truncate(used + n);
                return;
            }
            Err(EncodeError::InsufficientSize(s)) => grow(out, used, s.required_size),
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(used);
                return;
            }
        }
    }
}

/// Seals one record of `plain` onto `out`; false if the connection cannot write application
/// data yet.
fn seal(t: &mut TlsLink, plain: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let UnbufferedStatus { state, .. } = t.conn.process_tls_records(&mut []);
        match state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
            ConnectionState::WriteTraffic(mut w) => {
                let used = out.len();
                grow(out, used, plain.len() + 64);
                loop {
                    match w.encrypt(plain, &mut out[used..]) {
                        Ok(n) => {
                            out.truncate(used + n);
                            return Ok(true);
                        }
                        Err(EncryptError::InsufficientSize(s)) => grow(out, used, s.required_size),
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
            }
            ConnectionState::EncodeTlsData(mut e) => encode_into(out, &mut e),
            ConnectionState::TransmitTlsData(x) => x.done(),
            _ => return Ok(false),
        }
    }
}
