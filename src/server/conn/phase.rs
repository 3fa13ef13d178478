//! Where a connection is in its life, and what each phase allows. The shard changes phase in
//! one place (`Core::set_phase`), which keeps the gauges that follow from it.

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the upgrade request.
    Handshake,
    /// Upgraded; frames flow both ways.
    Open,
    /// We sent a close frame and read on until the client's close arrives.
    Closing,
    /// Nothing more will be read: input is discarded, the write side is shut once the outbox
    /// drains, and the socket closes at EOF or at the deadline.
    Linger,
}

impl Phase {
    /// Pushes, replies and client messages are taken only while open.
    pub(crate) fn is_open(self) -> bool {
        self == Phase::Open
    }

    /// Bytes read are decoded as frames (after our close too, to find the client's answer).
    pub(crate) fn reads_frames(self) -> bool {
        matches!(self, Phase::Open | Phase::Closing)
    }

    /// Reading waits while the outbox is full (a client that does not read stops being read);
    /// a closing connection is read on so its close handshake can end.
    pub(crate) fn pauses_when_full(self) -> bool {
        matches!(self, Phase::Handshake | Phase::Open)
    }

    /// Counted in the handshakes-in-progress gauge.
    pub(crate) fn is_handshake(self) -> bool {
        self == Phase::Handshake
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;

    #[test]
    fn each_phase_allows_what_it_says() {
        assert_eq!(
            [Handshake, Open, Closing, Linger].map(|p| p.is_open()),
            [false, true, false, false]
        );
        assert_eq!(
            [Handshake, Open, Closing, Linger].map(|p| p.reads_frames()),
            [false, true, true, false]
        );
        assert_eq!(
            [Handshake, Open, Closing, Linger].map(|p| p.pauses_when_full()),
            [true, true, false, false]
        );
    }
}
