//! STUN message helpers over the `stun` crate (RFC 8489), plus the TURN
//! attributes of RFC 8656 §18 that the crate carries only as type numbers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use stun::attributes::AttrType;
use stun::attributes::*;
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::message::{MAGIC_COOKIE, Setter};
pub use stun::message::{Message, MessageClass, MessageType, Method};
use stun::textattrs::TextAttribute;

use super::integrity::{self, Key, Mac, Signer};
use stun::uattrs::UnknownAttributes;

/// Check the fixed header (RFC 8489 §5): leading zero bits, magic cookie,
/// a length that is a multiple of 4 and matches the packet exactly.
pub fn header_ok(packet: &[u8]) -> bool {
    packet.len() >= 20
        && packet[0] >> 6 == 0
        && u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]) == MAGIC_COOKIE
        && {
            let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
            len.is_multiple_of(4) && packet.len() == 20 + len
        }
}

/// The error code of an error response built by [`Response::error`], whose
/// first attribute is ERROR-CODE; `None` for anything else.
pub fn reply_error_code(reply: &[u8]) -> Option<u16> {
    let is_error = reply.len() >= 28 && reply[0] & 0x01 != 0 && reply[1] & 0x10 != 0;
    (is_error && reply[20..22] == [0x00, 0x09])
        .then(|| (reply[26] & 0x07) as u16 * 100 + reply[27] as u16)
}

/// Most attributes read from one message. Real requests carry about ten (an
/// Allocate with every option has fewer than fifteen); a request with more
/// is refused with 400 before any attribute is copied, so that the cost of a
/// message stays linear in its size with a small constant.
pub const MAX_ATTRIBUTES: usize = 64;

/// Most attribute types listed in one UNKNOWN-ATTRIBUTES (RFC 8489 §14.13
/// puts no bound on the list; a client needs only a few to know what to
/// drop, and a short list keeps a 420 small).
pub const MAX_UNKNOWN_LISTED: usize = 16;

/// Largest request whose integrity is checked. A browser's Allocate is about
/// 150 bytes and no real client signs anything near 4 KB; a larger signed
/// request gets 400 without any HMAC being computed.
pub const MAX_SIGNED_LEN: usize = 4096;

/// Why a packet is not a usable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The fixed header is wrong (RFC 8489 §5): not STUN at all, so
    /// silently dropped (§6.3).
    Header,
    /// An attribute runs past the end of the message.
    Truncated,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    TooManyAttributes,
    /// FINGERPRINT is not last or does not match (RFC 8489 §14.7): treated
    /// like a bad header, since FINGERPRINT is what tells STUN apart.
    Fingerprint,
}

impl Malformed {
    /// Whether a request refused for this reason gets a 400. Only a request
    /// over the attribute limit does: it is well-formed STUN that this
    /// server declines to read. Anything that does not parse is dropped
    /// (RFC 8489 §6.3), as is a bad FINGERPRINT (§14.7).
    pub fn answerable(self) -> bool {
        self == Malformed::TooManyAttributes
    }
}

/// Walk the attribute headers of a message body without copying anything:
/// the number of attributes, or why the body is refused. Stops at the
/// first attribute past [`MAX_ATTRIBUTES`], so a 64 KB body of 16,000 empty
/// attributes costs 65 steps.
pub fn count_attributes(body: &[u8]) -> Result<usize, Malformed> {
    let mut off = 0;
    let mut n = 0;
    while off < body.len() {
        if body.len() - off < 4 {
            return Err(Malformed::Truncated);
        }
        n += 1;
        if n > MAX_ATTRIBUTES {
            return Err(Malformed::TooManyAttributes);
        }
        let len = u16::from_be_bytes([body[off + 2], body[off + 3]]) as usize;
        let padded = (len + 3) & !3;
        off += 4;
        if body.len() - off < padded {
            return Err(Malformed::Truncated);
        }
        off += padded;
    }
    Ok(n)
}

/// Decode a STUN message, refusing anything malformed: a bad header, a
/// truncated attribute, more than [`MAX_ATTRIBUTES`] attributes, or a
/// FINGERPRINT that is not last or does not match (RFC 8489 §14.7).
pub fn decode(packet: &[u8]) -> Option<Message> {
    parse(packet).ok()
}

/// [`decode`], saying why a packet is refused. The attribute headers are
/// counted over the raw bytes first; the `stun` crate, which copies every
/// attribute into its own vector, only sees messages within the limit.
pub fn parse(packet: &[u8]) -> Result<Message, Malformed> {
    if !header_ok(packet) {
        return Err(Malformed::Header);
    }
    let n = count_attributes(&packet[20..])?;
    // The crate's decode clears the list and pushes each attribute: room
    // for all of them at once.
    let mut m = Message {
        raw: packet.to_vec(),
        attributes: stun::attributes::Attributes(Vec::with_capacity(n)),
        ..Default::default()
    };
    m.decode().map_err(|_| Malformed::Truncated)?;
    if let Some(pos) = m
        .attributes
        .0
        .iter()
        .position(|a| a.typ == ATTR_FINGERPRINT)
        && (pos + 1 != m.attributes.0.len() || !super::fingerprint::check(&m.raw))
    {
        return Err(Malformed::Fingerprint);
    }
    Ok(m)
}

/// A message holding only the header of `packet` (method, class and
/// transaction id), enough to answer it with an error; `None` if the
/// header itself is wrong.
pub fn header_only(packet: &[u8]) -> Option<Message> {
    if !header_ok(packet) {
        return None;
    }
    let mut m = Message::new();
    m.typ.read_value(u16::from_be_bytes([packet[0], packet[1]]));
    m.transaction_id.0.copy_from_slice(&packet[8..20]);
    Some(m)
}

/// Whether the message carries a FINGERPRINT (a Binding answer then carries one too).
pub fn has_fingerprint(m: &Message) -> bool {
    m.contains(ATTR_FINGERPRINT)
}

/// The attributes of the message that precede MESSAGE-INTEGRITY or
/// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5, §14.6: everything after them
/// but FINGERPRINT is to be ignored).
pub fn attrs_before_integrity(m: &Message) -> impl Iterator<Item = &RawAttribute> {
    // Either integrity attribute ends what the signature covers.
    m.attributes
        .0
        .iter()
        .take_while(|a| a.typ != ATTR_MESSAGE_INTEGRITY && a.typ != ATTR_MESSAGE_INTEGRITY_SHA256)
}

/// The value of the first attribute of type `t` before MESSAGE-INTEGRITY.
pub fn attr(m: &Message, t: AttrType) -> Option<&[u8]> {
    attrs_before_integrity(m)
        .find(|a| a.typ == t)
        .map(|a| a.value.as_slice())
}

/// Comprehension-required attribute types (0x0000–0x7FFF) not in `known`
/// (RFC 8489 §14), each once, at most [`MAX_UNKNOWN_LISTED`] of them. With
/// at most [`MAX_ATTRIBUTES`] attributes the searches are bounded too.
pub fn unknown_required(m: &Message, known: &[AttrType]) -> Vec<AttrType> {
    let mut out = Vec::new();
    for a in attrs_before_integrity(m) {
        if a.typ.required() && !known.contains(&a.typ) && !out.contains(&a.typ) {
            out.push(a.typ);
            if out.len() == MAX_UNKNOWN_LISTED {
                break;
            }
        }
    }
    out
}

/// A text attribute (USERNAME, REALM, NONCE), if present and UTF-8.
pub fn text(m: &Message, t: AttrType) -> Option<String> {
    let v = attr(m, t)?;
    if v.len() > 763 {
        return None;
    }
    String::from_utf8(v.to_vec()).ok()
}

/// A 32-bit attribute such as LIFETIME (RFC 8656 §18.2).
pub fn u32_attr(m: &Message, t: AttrType) -> Option<Result<u32, ()>> {
    attr(m, t).map(|v| {
        <[u8; 4]>::try_from(v)
            .map(u32::from_be_bytes)
            .map_err(|_| ())
    })
}

/// CHANNEL-NUMBER (RFC 8656 §18.1): the number and two bytes RFFU.
pub fn channel_number(m: &Message) -> Option<Result<u16, ()>> {
    attr(m, ATTR_CHANNEL_NUMBER).map(|v| {
        if v.len() == 4 {
            Ok(u16::from_be_bytes([v[0], v[1]]))
        } else {
            Err(())
        }
    })
}

/// REQUESTED-TRANSPORT (RFC 8656 §18.7): protocol number and three bytes RFFU.
pub fn requested_transport(m: &Message) -> Option<Result<u8, ()>> {
    attr(m, ATTR_REQUESTED_TRANSPORT).map(|v| if v.len() == 4 { Ok(v[0]) } else { Err(()) })
}

/// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6): 0x01 IPv4, 0x02 IPv6.
pub fn requested_family(m: &Message) -> Option<Result<u8, ()>> {
    attr(m, ATTR_REQUESTED_ADDRESS_FAMILY).map(|v| if v.len() == 4 { Ok(v[0]) } else { Err(()) })
}

/// Decode an XOR-encoded address value (RFC 8489 §14.2).
pub fn read_xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(txid);
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ key[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Encode an XOR address value into `dst` (8 bytes for IPv4, 20 for IPv6).
pub fn write_xor_address(dst: &mut [u8], addr: SocketAddr, txid: &[u8; 12]) {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(txid);
    dst[0] = 0;
    dst[2..4].copy_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            dst[1] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                dst[4 + i] = b ^ key[i];
            }
        }
        IpAddr::V6(ip) => {
            dst[1] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                dst[4 + i] = b ^ key[i];
            }
        }
    }
}

/// Every XOR-PEER-ADDRESS in the request (RFC 8656 §9.1 allows several);
/// `Err` if one of them is malformed.
pub fn xor_peer_addresses(m: &Message) -> Result<Vec<SocketAddr>, ()> {
    attrs_before_integrity(m)
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| read_xor_address(&a.value, &m.transaction_id.0).ok_or(()))
        .collect()
}

/// Where the value of the first attribute `t` before MESSAGE-INTEGRITY lies
/// in the packet the message was decoded from: `(start, end)`.
pub fn attr_range(m: &Message, t: AttrType) -> Option<(usize, usize)> {
    let len = attr(m, t)?.len();
    let start = super::integrity::attr_offset(m, t)? + 4;
    Some((start, start + len))
}

/// Whether the request carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
pub fn has_integrity(m: &Message) -> bool {
    super::integrity::present(m).is_some()
}

/// The reason phrase we send with an error code.
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Mobility Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

/// A response under construction, answering one request.
pub struct Response {
    m: Message,
}

impl Response {
    /// A success response to `req` (same method and transaction id).
    pub fn success(req: &Message) -> Self {
        Self::with_class(req, stun::message::CLASS_SUCCESS_RESPONSE)
    }

    /// An error response to `req` with ERROR-CODE `code` (RFC 8489 §14.8).
    pub fn error(req: &Message, code: u16) -> Self {
        let mut r = Self::with_class(req, stun::message::CLASS_ERROR_RESPONSE);
        let attr = ErrorCodeAttribute {
            code: ErrorCode(code),
            reason: reason(code).as_bytes().to_vec(),
        };
        attr.add_to(&mut r.m).expect("error code in range");
        r
    }

    fn with_class(req: &Message, class: MessageClass) -> Self {
        let mut m = Message::new();
        m.typ = MessageType::new(req.typ.method, class);
        m.transaction_id = req.transaction_id;
        m.write_header();
        Response { m }
    }

    /// Add an XOR-encoded address attribute.
    pub fn xor_address(mut self, t: AttrType, addr: SocketAddr) -> Self {
        let mut v = [0u8; 20];
        let n = if addr.is_ipv4() { 8 } else { 20 };
        write_xor_address(&mut v[..n], addr, &self.m.transaction_id.0);
        self.m.add(t, &v[..n]);
        self
    }

    /// Add a plain (not XOR-encoded) address attribute such as
    /// ALTERNATE-SERVER (RFC 8489 §14.15, encoded as MAPPED-ADDRESS).
    pub fn address(mut self, t: AttrType, addr: SocketAddr) -> Self {
        let mut v = vec![0u8, if addr.is_ipv4() { 0x01 } else { 0x02 }];
        v.extend_from_slice(&addr.port().to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => v.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => v.extend_from_slice(&ip.octets()),
        }
        self.m.add(t, &v);
        self
    }

    /// Add ADDRESS-ERROR-CODE (RFC 8656 §18.12): which family (0x01, 0x02)
    /// could not be allocated, and why.
    pub fn address_error(mut self, family: u8, code: u16) -> Self {
        let mut v = vec![family, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason(code).as_bytes());
        self.m.add(AttrType(0x8001), &v);
        self
    }

    /// Add a 32-bit attribute such as LIFETIME.
    pub fn u32(mut self, t: AttrType, v: u32) -> Self {
        self.m.add(t, &v.to_be_bytes());
        self
    }

    /// Add an opaque attribute such as RESERVATION-TOKEN.
    pub fn bytes(mut self, t: AttrType, v: &[u8]) -> Self {
        self.m.add(t, v);
        self
    }

    /// Add a text attribute such as REALM or NONCE.
    pub fn text(mut self, t: AttrType, v: &str) -> Self {
        TextAttribute::new(t, v.to_owned())
            .add_to(&mut self.m)
            .expect("text attribute");
        self
    }

    /// Add UNKNOWN-ATTRIBUTES (RFC 8489 §14.13), with at most
    /// [`MAX_UNKNOWN_LISTED`] types whatever the caller gives.
    pub fn unknown(mut self, mut types: Vec<AttrType>) -> Self {
        types.truncate(MAX_UNKNOWN_LISTED);
        UnknownAttributes(types)
            .add_to(&mut self.m)
            .expect("unknown attributes");
        self
    }

    /// Finish: the integrity attribute if a signer is given, then
    /// FINGERPRINT if asked.
    pub fn finish(mut self, signer: Option<&Signer>, fingerprint: bool) -> Vec<u8> {
        if let Some(s) = signer {
            integrity::sign(&mut self.m, s);
        }
        if fingerprint {
            super::fingerprint::add(&mut self.m);
        }
        self.m.raw
    }
}

/// How a request names its user: USERNAME, or USERHASH (RFC 8489 §14.4).
#[derive(Debug, Clone, Copy)]
pub enum User<'a> {
    Name(&'a str),
    Hash([u8; 32]),
}

/// The PASSWORD-ALGORITHMS value this server offers (RFC 8489 §14.11):
/// MD5 and SHA-256, each without parameters.
pub const PASSWORD_ALGORITHMS: [u8; 8] = [0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00];

/// A request or indication under construction: what clients send. The
/// server never sends requests; tests, the load generator and tools do.
pub struct Request {
    m: Message,
}

impl Request {
    /// A request of `method` with a random transaction id.
    pub fn new(method: Method) -> Self {
        Self::with_class(method, stun::message::CLASS_REQUEST)
    }

    /// An indication of `method` (Send, Binding).
    pub fn indication(method: Method) -> Self {
        Self::with_class(method, stun::message::CLASS_INDICATION)
    }

    fn with_class(method: Method, class: MessageClass) -> Self {
        let mut m = Message::new();
        m.typ = MessageType::new(method, class);
        m.new_transaction_id().expect("random transaction id");
        m.write_header();
        Request { m }
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        self.m.transaction_id.0
    }

    /// Add any attribute.
    pub fn attr(mut self, t: AttrType, v: &[u8]) -> Self {
        self.m.add(t, v);
        self
    }

    /// REQUESTED-TRANSPORT with a protocol number (17 for UDP).
    pub fn transport(self, proto: u8) -> Self {
        self.attr(ATTR_REQUESTED_TRANSPORT, &[proto, 0, 0, 0])
    }

    pub fn lifetime(self, secs: u32) -> Self {
        self.attr(ATTR_LIFETIME, &secs.to_be_bytes())
    }

    /// One XOR-PEER-ADDRESS; call again for more.
    pub fn peer(self, p: SocketAddr) -> Self {
        let mut v = [0u8; 20];
        let n = if p.is_ipv4() { 8 } else { 20 };
        write_xor_address(&mut v[..n], p, &self.m.transaction_id.0);
        self.attr(ATTR_XOR_PEER_ADDRESS, &v[..n])
    }

    pub fn channel(self, n: u16) -> Self {
        let b = n.to_be_bytes();
        self.attr(ATTR_CHANNEL_NUMBER, &[b[0], b[1], 0, 0])
    }

    /// Finish with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY for the
    /// long-term credentials `user`/`password`.
    pub fn sign(self, user: &str, realm: &str, password: &str, nonce: &str) -> Vec<u8> {
        let key = Key::md5(user, realm, password);
        let signer = Signer {
            key,
            mac: Mac::Sha1,
        };
        self.sign_with(User::Name(user), realm, nonce, None, &signer)
    }

    /// Finish with the user (USERNAME or USERHASH), REALM, NONCE, the
    /// PASSWORD-ALGORITHMS the server offers and the chosen
    /// PASSWORD-ALGORITHM when `algorithm` is given (RFC 8489 §9.2.4), and
    /// the integrity attribute of `signer`.
    pub fn sign_with(
        mut self,
        user: User<'_>,
        realm: &str,
        nonce: &str,
        algorithm: Option<u16>,
        signer: &Signer,
    ) -> Vec<u8> {
        match user {
            User::Name(u) => self.m.add(ATTR_USERNAME, u.as_bytes()),
            User::Hash(h) => self.m.add(ATTR_USER_HASH, &h),
        }
        self.m.add(ATTR_REALM, realm.as_bytes());
        self.m.add(ATTR_NONCE, nonce.as_bytes());
        if let Some(a) = algorithm {
            self.m.add(ATTR_PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS);
            let b = a.to_be_bytes();
            self.m.add(ATTR_PASSWORD_ALGORITHM, &[b[0], b[1], 0, 0]);
        }
        integrity::sign(&mut self.m, signer);
        self.m.raw
    }

    /// Finish with FINGERPRINT.
    pub fn fingerprinted(mut self) -> Vec<u8> {
        super::fingerprint::add(&mut self.m);
        self.m.raw
    }

    /// Finish unsigned.
    pub fn bytes(self) -> Vec<u8> {
        self.m.raw
    }
}

/// The ERROR-CODE of a response, if it has one.
pub fn error_code(m: &Message) -> Option<u16> {
    let v = attr(m, ATTR_ERROR_CODE)?;
    (v.len() >= 4).then(|| (v[2] & 0x7) as u16 * 100 + v[3] as u16)
}

/// An XOR-encoded address attribute of a message (XOR-MAPPED-ADDRESS,
/// XOR-RELAYED-ADDRESS, XOR-PEER-ADDRESS).
pub fn xor_address(m: &Message, t: AttrType) -> Option<SocketAddr> {
    read_xor_address(attr(m, t)?, &m.transaction_id.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1 sample request, short-term credentials with password
    /// "VOkJxbRl1RmTxUk/WvJxBt".
    const RFC5769_REQUEST: &[u8] = &[
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn rfc5769_request_verifies() {
        let m = decode(RFC5769_REQUEST).expect("decodes");
        assert!(has_fingerprint(&m));
        // Short-term credentials: the key is the password itself.
        assert!(integrity::verify_bytes(&m, b"VOkJxbRl1RmTxUk/WvJxBt").is_some());
        assert!(integrity::verify_bytes(&m, b"wrong").is_none());
        assert_eq!(text(&m, ATTR_USERNAME).as_deref(), Some("evtj:h6vY"));
    }

    #[test]
    fn error_code_from_bytes() {
        let req = decode(RFC5769_REQUEST).unwrap();
        let mut m = Request::new(stun::message::METHOD_CHANNEL_BIND).bytes();
        m = Response::error(&decode(&m).unwrap(), 438).finish(None, false);
        assert_eq!(reply_error_code(&m), Some(438));
        let ok = Response::success(&req).finish(None, false);
        assert_eq!(reply_error_code(&ok), None);
    }

    #[test]
    fn corrupted_fingerprint_is_rejected() {
        let mut p = RFC5769_REQUEST.to_vec();
        let n = p.len();
        p[n - 1] ^= 1;
        assert!(decode(&p).is_none());
    }

    #[test]
    fn bad_headers_are_rejected() {
        assert!(decode(&[0u8; 19]).is_none());
        let mut p = RFC5769_REQUEST.to_vec();
        p[0] = 0x80;
        assert!(decode(&p).is_none());
        let mut p = RFC5769_REQUEST.to_vec();
        p.push(0);
        assert!(decode(&p).is_none());
    }

    /// A Binding request whose body is `n` empty attributes of distinct
    /// comprehension-required types from 0x4000 up.
    fn many_attributes(n: usize) -> Vec<u8> {
        let mut p = Request::new(stun::message::METHOD_BINDING).bytes();
        for i in 0..n {
            p.extend_from_slice(&(0x4000 + i as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0]);
        }
        let len = (p.len() - 20) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn attribute_count_is_capped_before_the_crate_decodes() {
        let ok = many_attributes(MAX_ATTRIBUTES);
        assert_eq!(count_attributes(&ok[20..]), Ok(MAX_ATTRIBUTES));
        assert_eq!(decode(&ok).unwrap().attributes.0.len(), MAX_ATTRIBUTES);
        // 16,383 attributes: the largest datagram's worth.
        for n in [MAX_ATTRIBUTES + 1, 16_383] {
            let p = many_attributes(n);
            assert_eq!(parse(&p).err(), Some(Malformed::TooManyAttributes));
        }
        // A truncated attribute, and a header that announces more than it has.
        let mut t = many_attributes(1);
        t[23] = 8;
        assert_eq!(parse(&t).err(), Some(Malformed::Truncated));
        assert!(Malformed::TooManyAttributes.answerable() && !Malformed::Truncated.answerable());
        let h = header_only(&t).unwrap();
        assert_eq!(h.transaction_id.0, t[8..20]);
        assert_eq!(h.typ, stun::message::BINDING_REQUEST);
    }

    #[test]
    fn unknown_attributes_are_listed_once_and_at_most_sixteen() {
        let m = decode(&many_attributes(40)).unwrap();
        let u = unknown_required(&m, &[AttrType(0x4000)]);
        assert_eq!(u.len(), MAX_UNKNOWN_LISTED);
        assert_eq!(u[0], AttrType(0x4001));
        // Duplicates are listed once.
        let dup = Request::new(stun::message::METHOD_BINDING)
            .attr(AttrType(0x7000), b"")
            .attr(AttrType(0x7000), b"")
            .bytes();
        assert_eq!(
            unknown_required(&decode(&dup).unwrap(), &[]),
            vec![AttrType(0x7000)]
        );
        let answer = Response::error(&m, 420).unknown(u).finish(None, false);
        assert!(answer.len() <= 20 + 8 + 20 + 4 + 2 * MAX_UNKNOWN_LISTED);
    }

    #[test]
    fn responses_carry_integrity_that_verifies() {
        let req = decode(RFC5769_REQUEST).unwrap();
        let key = Signer {
            key: Key::md5("u", "r", "p"),
            mac: Mac::Sha1,
        };
        let bytes = Response::success(&req)
            .xor_address(ATTR_XORMAPPED_ADDRESS, "[2001:db8::1]:5".parse().unwrap())
            .finish(Some(&key), true);
        let m = decode(&bytes).unwrap();
        assert_eq!(integrity::verify(&m, &key.key), Some(Mac::Sha1));
        let a = read_xor_address(
            attr(&m, ATTR_XORMAPPED_ADDRESS).unwrap(),
            &m.transaction_id.0,
        );
        assert_eq!(a, Some("[2001:db8::1]:5".parse().unwrap()));
    }
}
