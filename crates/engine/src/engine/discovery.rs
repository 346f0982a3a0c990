//! NAT behaviour discovery (RFC 5780) on Binding requests.
//!
//! With a second address and a second port the server listens on four UDP
//! sockets: the primary listener (its address and port), the primary
//! address with the other port, the other address with the primary port,
//! and the other address with the other port. A Binding request that
//! arrives on any of them is answered with RESPONSE-ORIGIN (the socket the
//! answer leaves from, §7.3) and OTHER-ADDRESS (the socket a change of
//! both address and port would answer from, §7.4); CHANGE-REQUEST (§7.2)
//! picks the socket the answer leaves from, RESPONSE-PORT (§7.5) the port
//! of the client's own IP it goes to, and PADDING (§7.6) is accepted.
//!
//! Reflection: each request gets at most one answer, always to the IP it
//! came from, never larger than the request plus [`ANSWER_OVERHEAD`]
//! bytes. PADDING in the answer only fills it up to the request's own
//! size, and PADDING with RESPONSE-PORT gets 400 (§6.1), so neither can
//! make an answer bigger than what a spoofer sends.

use std::net::SocketAddr;
use std::time::Instant;

use stun::attributes::{
    ATTR_CHANGE_REQUEST, ATTR_OTHER_ADDRESS, ATTR_PADDING, ATTR_RESPONSE_ORIGIN,
    ATTR_RESPONSE_PORT, ATTR_XORMAPPED_ADDRESS, AttrType,
};
use stun::message::Message;

use super::stats::Code;
use super::{Engine, Reject, Reply};
use crate::addr::{ClientAddr, Via};
use crate::proto::stun as wire;

/// The most a Binding answer on a discovery socket exceeds its request
/// by: the answer has the request's 20-byte header, its FINGERPRINT (8)
/// if the request had one and an empty PADDING (4) if the request had
/// one, so what it adds is XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and
/// OTHER-ADDRESS, 24 bytes each with IPv6 addresses (12 with IPv4). A
/// padded answer is filled only up to the request's size.
pub const ANSWER_OVERHEAD: usize = 72;

/// The request attributes RFC 5780 adds, understood on discovery sockets
/// only: elsewhere they stay unknown and get 420 (RFC 8489 §6.3.1;
/// RFC 5780 §6.1 asks 420 for CHANGE-REQUEST from a server without a
/// second address).
const REQUEST_ATTRS: [AttrType; 3] = [ATTR_CHANGE_REQUEST, ATTR_RESPONSE_PORT, ATTR_PADDING];

/// The four sockets of NAT behaviour discovery, each a UDP listener index
/// with its local address. Position `i` holds the other address when bit
/// 1 of `i` is set and the other port when bit 0 is: `[primary address
/// and port, primary address and other port, other address and primary
/// port, other address and port]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatSockets {
    pub sockets: [(u16, SocketAddr); 4],
}

impl NatSockets {
    /// The position of the socket a client came through, if it is one of
    /// the four.
    pub fn position(&self, via: Via) -> Option<usize> {
        match via {
            Via::Udp(l) => self.sockets.iter().position(|s| s.0 == l),
            Via::Dtls(_) | Via::Stream { .. } => None,
        }
    }

    /// The listener indexes of the three sockets besides the primary one,
    /// which serve Binding only.
    pub fn extra_listeners(&self) -> [u16; 3] {
        [self.sockets[1].0, self.sockets[2].0, self.sockets[3].0]
    }

    /// The socket that answers a request that arrived at position `at`,
    /// with the address and port changed as asked.
    fn answering(&self, at: usize, change_ip: bool, change_port: bool) -> (u16, SocketAddr) {
        let flip = usize::from(change_ip) << 1 | usize::from(change_port);
        self.sockets[at ^ flip]
    }
}

/// What a Binding request asks of discovery, or why it gets 400.
struct Asked {
    change_ip: bool,
    change_port: bool,
    response_port: Option<u16>,
    padding: bool,
}

fn asked(m: &Message) -> Result<Asked, ()> {
    // CHANGE-REQUEST: 32 bits, "change IP" 0x4 and "change port" 0x2.
    let (change_ip, change_port) = match wire::u32_attr(m, ATTR_CHANGE_REQUEST) {
        None => (false, false),
        Some(Ok(flags)) => (flags & 0x4 != 0, flags & 0x2 != 0),
        Some(Err(())) => return Err(()),
    };
    // RESPONSE-PORT: 16 bits and 2 of padding; port 0 reaches nobody.
    let response_port = match wire::attr(m, ATTR_RESPONSE_PORT) {
        None => None,
        Some(&[a, b, _, _]) if u16::from_be_bytes([a, b]) != 0 => Some(u16::from_be_bytes([a, b])),
        Some(_) => return Err(()),
    };
    let padding = wire::attr(m, ATTR_PADDING).is_some();
    // §6.1: PADDING with RESPONSE-PORT gets 400, so that padded answers
    // never go to a port other than the request's.
    if padding && response_port.is_some() {
        return Err(());
    }
    Ok(Asked {
        change_ip,
        change_port,
        response_port,
        padding,
    })
}

impl Engine {
    /// The discovery sockets and the position `client` came through, when
    /// it came through one of them.
    pub(super) fn discovery_socket(&self, client: ClientAddr) -> Option<(NatSockets, usize)> {
        let nat = self.cfg.nat_behaviour?;
        nat.position(client.via).map(|at| (nat, at))
    }

    /// Whether `t` is an attribute this socket understands in a Binding.
    pub(super) fn discovery_attr(t: AttrType) -> bool {
        REQUEST_ATTRS.contains(&t)
    }

    /// A Binding request on discovery socket `at` (RFC 5780 §6.1), its
    /// unknown attributes already answered.
    pub(super) fn discovery_binding(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
        nat: NatSockets,
        at: usize,
    ) {
        let Ok(a) = asked(m) else {
            self.unauthenticated_answer(now, client, m, Reject::Plain(Code::BadRequest));
            return;
        };
        let (from, origin) = nat.answering(at, a.change_ip, a.change_port);
        let other = nat.answering(at, true, true).1;
        let fingerprint = wire::has_fingerprint(m);
        let reply = || {
            Reply::success(m).with(|r| {
                r.xor_address(ATTR_XORMAPPED_ADDRESS, client.remote)
                    .address(ATTR_RESPONSE_ORIGIN, origin)
                    .address(ATTR_OTHER_ADDRESS, other)
            })
        };
        let answer = if a.padding {
            // PADDING fills the answer up to the request's size at most
            // (RFC 5780 §6.1 suggests the path MTU; that would amplify).
            let bare = reply().finish(None, fingerprint).data.len() + 4;
            let fill = m.raw.len().saturating_sub(bare) & !3;
            let zeros = vec![0u8; fill];
            reply()
                .with(|r| r.bytes(ATTR_PADDING, &zeros))
                .finish(None, fingerprint)
        } else {
            reply().finish(None, fingerprint)
        };
        let to = ClientAddr {
            remote: SocketAddr::new(
                client.remote.ip(),
                a.response_port.unwrap_or(client.remote.port()),
            ),
            via: Via::Udp(from),
        };
        self.reply(to, answer);
    }
}
