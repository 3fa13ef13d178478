//! The transport seam: the byte path between a connection's socket and its WebSocket codec.
//! The shard does every recv and sendmsg into buffers it owns; a link only transforms bytes on
//! the way (the shape of rustls' unbuffered API, which TLS will use: decrypt in place in the
//! shard's read buffer, seal into records on the way out). A plain link passes bytes through,
//! and being a field-less variant it costs a plain connection nothing.

use std::io::{self, IoSlice};

/// How a connection's bytes travel.
#[derive(Debug, Default)]
pub(crate) enum Link {
    /// Cleartext: what is read is what the codec sees.
    #[default]
    Plain,
}

impl Link {
    /// Turns bytes just read from the socket (kept bytes in front) into what the codec reads,
    /// in place; returns the plaintext part of `wire`.
    pub(crate) fn read<'a>(&mut self, wire: &'a mut [u8]) -> &'a mut [u8] {
        match self {
            Link::Plain => wire,
        }
    }

    /// Writes queued plaintext through `send` (the socket's gather write); returns how much
    /// plaintext was taken.
    pub(crate) fn write(
        &mut self,
        plaintext: &[IoSlice<'_>],
        send: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        match self {
            Link::Plain => send(plaintext),
        }
    }
}
