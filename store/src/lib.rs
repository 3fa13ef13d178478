//! ringcast's embedded store: one segmented append-only log per shard, written only by that
//! shard (the home of the streams whose records it holds).
//!
//! - [`record`]: the record format, sans-IO (length, CRC, kind, body) and its reader, which
//!   never returns a record whose CRC failed.
//! - [`Log`]: the owner's side. Records are appended during a shard's turn and sealed at its
//!   end into one commit; the writer thread writes the commit, syncs it as the
//!   [`Durability`] asks (one `fdatasync` for everything that was waiting: group commit) and
//!   reports it, so the shard never blocks on the disk. Each segment counts its live records;
//!   one with none left is deleted whole.
//! - Replay at open: every readable record in order; a torn tail of the last segment is cut
//!   off at the last valid CRC, and any damage is reported so the owner can tell the streams
//!   that lost records (a new epoch: clients see `reset`, never a silent gap).
#![forbid(unsafe_code)]

mod log;
pub mod record;
mod segment;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;

pub use log::{Damage, Held, Log, Options, RecordId, Replayed};
pub use segment::HEADER_LEN;
pub use writer::{Commit, Durability, WriterStats};
