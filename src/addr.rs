//! Newtypes that keep a client's transport address, a peer address, a relay
//! port and a channel number from being confused with one another.

use std::fmt;
use std::net::SocketAddr;

/// How a client reaches us: which listener socket (UDP) or which stream
/// connection (TCP/TLS). Together with the remote address it is the
/// 5-tuple of RFC 8656 §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A UDP listener, by `[[listen]]` index.
    Udp(u16),
    /// A stream connection, unique within its worker, on a listener;
    /// `tls` when it runs over TLS.
    Stream { listener: u16, conn: u32, tls: bool },
}

impl Via {
    /// The index of the `[[listen]]` entry the client came through.
    pub fn listener(self) -> u16 {
        match self {
            Via::Udp(l) | Via::Stream { listener: l, .. } => l,
        }
    }

    /// Whether this is a stream transport, where ChannelData is padded.
    pub fn is_stream(self) -> bool {
        matches!(self, Via::Stream { .. })
    }
}

/// A client's transport address: its public address and how it reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    pub remote: SocketAddr,
    pub via: Via,
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.via {
            Via::Udp(_) => "udp",
            Via::Stream { tls: false, .. } => "tcp",
            Via::Stream { tls: true, .. } => "tls",
        };
        write!(f, "{}/{}", self.remote, t)
    }
}

/// A peer's transport address: where relayed data goes or comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay port on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort(pub u16);

/// A TURN channel number, 0x4000–0x4FFF (RFC 8656 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// A channel number a client may bind, or `None` outside the range.
    pub fn new(n: u16) -> Option<Self> {
        (crate::proto::channel_data::CHANNEL_MIN..=crate::proto::channel_data::CHANNEL_MAX)
            .contains(&n)
            .then_some(ChannelNumber(n))
    }

    /// A channel number in RFC 5766's wider range, 0x4000–0x7FFF, which
    /// some older clients (coturn's test tools among them) still pick.
    pub fn new_legacy(n: u16) -> Option<Self> {
        (0x4000..=0x7FFF).contains(&n).then_some(ChannelNumber(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Handle of an allocation inside one engine; the shell keys relay sockets by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocId(pub u32);
