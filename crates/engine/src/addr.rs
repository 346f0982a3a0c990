//! Newtypes that keep a client's transport address, a peer address, a relay
//! port and a channel number from being confused with one another.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where a client comes from, as caps and rate limits count it: its IPv4
/// address (also when it comes IPv4-mapped), or the /64 of its IPv6 one (a
/// subscriber usually gets a whole /64, so counting addresses would cap
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    V4(Ipv4Addr),
    /// The top 64 bits of the address.
    V6Net(u64),
}

impl Origin {
    pub fn of(ip: IpAddr) -> Origin {
        match ip.to_canonical() {
            IpAddr::V4(a) => Origin::V4(a),
            IpAddr::V6(a) => Origin::V6Net((u128::from(a) >> 64) as u64),
        }
    }

    /// The /48 of an IPv6 origin (a site: a home's /56 lies in one).
    pub fn site(self) -> Option<u64> {
        match self {
            Origin::V4(_) => None,
            Origin::V6Net(n) => Some(n >> 16),
        }
    }

    /// One number per origin, for hashing (IPv4 and IPv6 never collide).
    pub fn key(self) -> u128 {
        match self {
            Origin::V4(a) => u32::from(a) as u128,
            Origin::V6Net(n) => (n as u128) << 64 | 1 << 63,
        }
    }
}

/// How a client reaches us: which listener socket (UDP) or which stream
/// connection (TCP/TLS). Together with the remote address it is the
/// 5-tuple of RFC 8656 §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A UDP listener, by `[[listen]]` index.
    Udp(u16),
    /// A DTLS listener (RFC 7350), by `[[listen]]` index: datagrams like
    /// UDP, each inside a DTLS record of the client's session.
    Dtls(u16),
    /// A stream connection, unique within its worker, on a listener;
    /// `tls` when it runs over TLS.
    Stream { listener: u16, conn: u32, tls: bool },
}

impl Via {
    /// The index of the `[[listen]]` entry the client came through.
    pub fn listener(self) -> u16 {
        match self {
            Via::Udp(l) | Via::Dtls(l) | Via::Stream { listener: l, .. } => l,
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
            Via::Dtls(_) => "dtls",
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

#[cfg(test)]
mod tests {
    use super::Origin;

    #[test]
    fn an_origin_is_an_ipv4_address_or_an_ipv6_64() {
        let o = |s: &str| Origin::of(s.parse().unwrap());
        assert_eq!(o("::ffff:192.0.2.1"), o("192.0.2.1"));
        assert_eq!(o("2001:db8:1:2::1"), o("2001:db8:1:2:ffff::9"));
        assert_ne!(o("2001:db8:1:2::1"), o("2001:db8:1:3::1"));
        assert_eq!(o("2001:db8:1:2::1").site(), o("2001:db8:1:ff00::1").site());
        assert_ne!(o("2001:db8:1::1").site(), o("2001:db8:2::1").site());
        assert_eq!(o("192.0.2.1").site(), None);
        assert_ne!(o("192.0.2.1").key(), o("::c000:201").key());
    }
}
