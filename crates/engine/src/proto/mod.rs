//! Wire formats. Nothing here knows about allocations or sockets.

pub mod channel_data;
pub mod fingerprint;
pub mod framing;
pub mod integrity;
pub mod stun;

/// What the first bytes of a client packet are (RFC 8656 §12.3: the first two
/// bits tell STUN (0b00) from ChannelData (0b01)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

/// Classify a packet by its first byte.
#[inline]
pub fn classify(packet: &[u8]) -> Kind {
    match packet.first() {
        Some(b) if b >> 6 == 0 => Kind::Stun,
        Some(b) if b >> 6 == 1 => Kind::ChannelData,
        _ => Kind::Other,
    }
}
