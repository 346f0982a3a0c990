//! The PROXY protocol (HAProxy's specification, "The PROXY protocol",
//! versions 1 and 2): a load balancer that relays a TCP connection starts
//! it with a header naming the client it came from. On a `[[listen]]`
//! entry with `proxy_protocol = true` every connection must start with
//! one (before the TLS handshake on a TLS listener), and the client it
//! names is the connection's client for everything after: the engine only
//! ever sees that address.
//!
//! What is taken: version 1 (a text line, `PROXY TCP4|TCP6|UNKNOWN ...`,
//! at most 107 bytes with its CRLF, spec §2.1) and version 2 (a 16-byte
//! binary header and an address block, spec §2.2), told apart by their
//! first byte. TLVs after the v2 addresses are skipped. A v2 `LOCAL`
//! command (the balancer's own health checks), a v2 header without an
//! address family (`AF_UNSPEC`) or with a Unix socket address, and v1
//! `UNKNOWN` name no client: the connection is the balancer's own.
//!
//! The header is read with exactly as many bytes as it needs (see
//! [`parse`]'s [`Parsed::Need`]), never more, so that the first bytes of
//! the TLS handshake or of the first STUN message stay in the socket for
//! what reads it next.
//!
//! Address families: the address the header names is taken as it is,
//! whatever the family of the connection from the balancer (an IPv6 client
//! behind an IPv4 balancer is an IPv6 client). An IPv4-mapped IPv6 address
//! is taken as the IPv4 address it maps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::policy::Cidr;

/// How long the whole header may take to arrive, from the accept.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest v1 line, CRLF included (spec §2.1: 107 bytes, the line of
/// two full-length IPv6 addresses and ports).
pub const V1_MAX: usize = 107;

/// The most bytes a v2 header may announce after its 16 fixed bytes: the
/// address block (at most 216, for Unix socket paths) and TLVs. Balancers
/// send a few dozen bytes of TLVs (an AWS NLB its VPC endpoint ID, HAProxy
/// a unique ID or TLS details); a longer header is refused as malformed.
pub const V2_MAX_BODY: usize = 2048;

/// The 12 bytes every v2 header starts with (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The start of every v1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

crate::engine::stats::labels! {
    /// Why a connection on a PROXY protocol listener was closed before it
    /// was served.
    pub enum Refusal("reason") {
        /// It came from an address outside the entry's `proxy_from`.
        Source = "source",
        /// Its first bytes were not a well-formed PROXY protocol header.
        Malformed = "malformed",
        /// Its header was not whole within [`HEADER_TIMEOUT`].
        Timeout = "timeout",
    }
}

/// What a header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection relays this client.
    Client(SocketAddr),
    /// The connection is the balancer's own (v2 `LOCAL`, v1 `UNKNOWN`, or
    /// an address family that names no IP client).
    Balancer,
}

/// Where the parse of a connection's first bytes stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed: read until there are this many in all (more
    /// than given, never beyond the header's end).
    Need(usize),
    /// A whole header of `len` bytes.
    Done { header: Header, len: usize },
}

/// Why the first bytes are not a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parse a header at the start of `buf`, which holds the connection's
/// first bytes and nothing past the header (what [`Parsed::Need`] asked
/// for). A prefix that no header starts with is refused at once, so that a
/// client that sends no header is closed without waiting.
pub fn parse(buf: &[u8]) -> Result<Parsed, Malformed> {
    match buf.first() {
        None => Ok(Parsed::Need(1)),
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Err(Malformed("not a PROXY protocol header")),
    }
}

/// Whether `buf` starts as `prefix` does, as far as either goes.
fn agrees(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// Version 2 (spec §2.2): the signature, version and command, family and
/// transport, the length of the rest, the addresses, then TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, Malformed> {
    if !agrees(buf, V2_SIGNATURE) {
        return Err(Malformed("not a PROXY protocol v2 signature"));
    }
    if buf.len() < 16 {
        return Ok(Parsed::Need(16));
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if version != 2 {
        return Err(Malformed("PROXY protocol v2 header of another version"));
    }
    if command > 1 {
        return Err(Malformed("unknown PROXY protocol v2 command"));
    }
    if family > 3 || transport > 2 {
        return Err(Malformed("unknown PROXY protocol v2 address family"));
    }
    if body > V2_MAX_BODY {
        return Err(Malformed("PROXY protocol v2 header too long"));
    }
    // The address block each family needs (spec §2.2: IPv4 12 bytes,
    // IPv6 36, Unix 216).
    let addresses = [0, 12, 36, 216][family as usize];
    if body < addresses {
        return Err(Malformed("PROXY protocol v2 address block too short"));
    }
    let len = 16 + body;
    if buf.len() < len {
        return Ok(Parsed::Need(len));
    }
    let a = &buf[16..];
    let header = match (command, family) {
        // LOCAL: whatever follows is the balancer's business (§2.2).
        (0, _) => Header::Balancer,
        (_, 1) => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Header::Client(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        (_, 2) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Header::Client(SocketAddr::new(
                ip.to_canonical(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // AF_UNSPEC or a Unix socket: no IP client to name (§2.2: the
        // receiver uses the connection's own addresses).
        _ => Header::Balancer,
    };
    Ok(Parsed::Done { header, len })
}

/// Version 1 (spec §2.1): `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `TCP6`
/// alike, or `PROXY UNKNOWN` and anything up to the CRLF.
fn parse_v1(buf: &[u8]) -> Result<Parsed, Malformed> {
    if !agrees(buf, V1_PREFIX) {
        return Err(Malformed("not a PROXY protocol v1 header"));
    }
    let Some(cr) = buf.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX - 1 {
            return Err(Malformed("PROXY protocol v1 line too long"));
        }
        if !buf.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(Malformed("PROXY protocol v1 line not printable"));
        }
        if buf.len() > V1_PREFIX.len() {
            let family = &buf[V1_PREFIX.len()..];
            if ![&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"]
                .iter()
                .any(|f| agrees(family, f))
            {
                return Err(Malformed("unknown PROXY protocol v1 protocol"));
            }
        }
        // The line's CR and LF are still to come; the shortest line is
        // "PROXY UNKNOWN\r\n".
        return Ok(Parsed::Need((buf.len() + 2).max(15)));
    };
    if cr + 2 > V1_MAX {
        return Err(Malformed("PROXY protocol v1 line too long"));
    }
    if cr + 1 == buf.len() {
        return Ok(Parsed::Need(cr + 2));
    }
    if buf[cr + 1] != b'\n' {
        return Err(Malformed("PROXY protocol v1 line without CRLF"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| Malformed("PROXY protocol v1 line not printable"))?;
    let len = cr + 2;
    let mut words = line.split(' ');
    let family = words.next().unwrap_or("");
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (§2.1).
        return Ok(Parsed::Done {
            header: Header::Balancer,
            len,
        });
    }
    let words: Vec<&str> = words.collect();
    let &[source, destination, source_port, destination_port] = words.as_slice() else {
        return Err(Malformed("PROXY protocol v1 line without four fields"));
    };
    let ip = |text: &str| -> Result<IpAddr, Malformed> {
        let ip = match family {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(|ip| ip.to_canonical()),
            _ => return Err(Malformed("unknown PROXY protocol v1 protocol")),
        };
        ip.map_err(|_| Malformed("PROXY protocol v1 address of the wrong form"))
    };
    let port = |text: &str| -> Result<u16, Malformed> {
        // Decimal digits only: `u16::from_str` would take a "+".
        match text.bytes().all(|b| b.is_ascii_digit()) && (1..=5).contains(&text.len()) {
            true => text
                .parse()
                .map_err(|_| Malformed("PROXY protocol v1 port")),
            false => Err(Malformed("PROXY protocol v1 port")),
        }
    };
    let client = SocketAddr::new(ip(source)?, port(source_port)?);
    ip(destination)?;
    port(destination_port)?;
    Ok(Parsed::Done {
        header: Header::Client(client),
        len,
    })
}

/// Why a header could not be read.
#[derive(Debug)]
pub enum ReadError {
    Malformed(Malformed),
    /// The connection ended or failed after this many bytes of a header.
    Closed(std::io::Error, usize),
}

/// Read the header at the start of `stream`, no byte past its end. The
/// caller bounds the time ([`HEADER_TIMEOUT`]).
pub async fn read(stream: &mut TcpStream) -> Result<Header, ReadError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let need = match parse(&buf).map_err(ReadError::Malformed)? {
            Parsed::Done { header, .. } => return Ok(header),
            Parsed::Need(n) => n,
        };
        let filled = buf.len();
        buf.resize(need, 0);
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => {
                let eof = std::io::ErrorKind::UnexpectedEof.into();
                return Err(ReadError::Closed(eof, filled));
            }
            Ok(n) => buf.truncate(filled + n),
            Err(e) => return Err(ReadError::Closed(e, filled)),
        }
    }
}

/// The load balancers a `proxy_protocol` listener takes connections from.
#[derive(Debug, Clone)]
pub struct Balancers(Vec<Cidr>);

impl Balancers {
    pub fn new(from: Vec<Cidr>) -> Balancers {
        Balancers(from)
    }

    /// Whether a connection from `ip` may send a header (an IPv4 address
    /// that a dual-stack socket reports IPv4-mapped is that IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse `bytes` the way [`read`] does: only as many as asked for.
    fn feed(bytes: &[u8]) -> Result<(Header, usize), Malformed> {
        let mut have = 0;
        loop {
            match parse(&bytes[..have])? {
                Parsed::Done { header, len } => return Ok((header, len)),
                Parsed::Need(n) => {
                    assert!(n > have, "asked for {n} with {have}");
                    if have == bytes.len() {
                        return Err(Malformed("(test) incomplete"));
                    }
                    have = n.min(bytes.len());
                }
            }
        }
    }

    fn client(s: &str) -> Header {
        Header::Client(s.parse().unwrap())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 3478\r\n";
        assert_eq!(feed(line), Ok((client("192.0.2.7:51000"), line.len())));
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 3478\r\n";
        assert_eq!(feed(line), Ok((client("[2001:db8::7]:51000"), line.len())));
        let line = b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 1 3478\r\n";
        assert_eq!(feed(line), Ok((client("192.0.2.7:1"), line.len())));
        assert_eq!(feed(b"PROXY UNKNOWN\r\n"), Ok((Header::Balancer, 15)));
        let line = b"PROXY UNKNOWN ffff:: ffff:: 65535 65535\r\n";
        assert_eq!(feed(line), Ok((Header::Balancer, line.len())));
        // The longest lines the specification allows.
        let a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert!(feed(tcp6.as_bytes()).is_ok());
        let unknown = format!("PROXY UNKNOWN {a} {a} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX);
        assert_eq!(feed(unknown.as_bytes()), Ok((Header::Balancer, V1_MAX)));
        let longer = format!("PROXY UNKNOWN {a} {a} 65535 655350\r\n");
        assert!(feed(longer.as_bytes()).is_err());
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 51000\r\n"[..],
            b"PROXY TCP4 192.0.2.7  198.51.100.1 51000 3478\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 51000 3478\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 51000 3478\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +5100 3478\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 3478\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 3478\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 3478\r\r",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 51000 3478\r\n",
            b"PROXY  TCP4 192.0.2.7 198.51.100.1 51000 3478\r\n",
            b"PROXZ",
            b"proxy TCP4",
            b"PROXY TCP4 192.0.2.\x007",
        ] {
            assert!(feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // No CRLF within 107 bytes.
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert!(feed(long.as_bytes()).is_err());
        // A STUN message on a listener that waits for a header.
        assert!(parse(&[0x00, 0x01, 0x00, 0x00]).is_err());
    }

    #[test]
    fn v2_headers() {
        let mut ipv4 = vec![192, 0, 2, 7, 198, 51, 100, 1];
        ipv4.extend_from_slice(&51000u16.to_be_bytes());
        ipv4.extend_from_slice(&3478u16.to_be_bytes());
        let h = v2(1, 0x11, &ipv4);
        assert_eq!(feed(&h), Ok((client("192.0.2.7:51000"), 28)));
        // TLVs are skipped: the header ends after them.
        let mut tlvs = ipv4.clone();
        tlvs.extend_from_slice(&[0x05, 0x00, 0x03, b'a', b'b', b'c']);
        let h = v2(1, 0x11, &tlvs);
        assert_eq!(feed(&h), Ok((client("192.0.2.7:51000"), 34)));
        let mut ipv6 = Vec::new();
        ipv6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        ipv6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        ipv6.extend_from_slice(&51000u16.to_be_bytes());
        ipv6.extend_from_slice(&3478u16.to_be_bytes());
        assert_eq!(
            feed(&v2(1, 0x21, &ipv6)),
            Ok((client("[2001:db8::7]:51000"), 52))
        );
        // LOCAL (health checks), with or without addresses.
        assert_eq!(feed(&v2(0, 0x00, &[])), Ok((Header::Balancer, 16)));
        assert_eq!(feed(&v2(0, 0x11, &ipv4)), Ok((Header::Balancer, 28)));
        // AF_UNSPEC and AF_UNIX name no IP client.
        assert_eq!(feed(&v2(1, 0x00, &[])), Ok((Header::Balancer, 16)));
        assert_eq!(feed(&v2(1, 0x31, &[0; 216])), Ok((Header::Balancer, 232)));
        // The largest body taken.
        let mut big = ipv4.clone();
        big.resize(V2_MAX_BODY, 0);
        assert!(feed(&v2(1, 0x11, &big)).is_ok());
    }

    #[test]
    fn v2_refusals() {
        let ipv4 = [0u8; 12];
        let mut other_version = v2(1, 0x11, &ipv4);
        other_version[12] = 0x11;
        let mut too_long = ipv4.to_vec();
        too_long.resize(V2_MAX_BODY + 1, 0);
        for bad in [
            other_version,
            v2(2, 0x11, &ipv4),
            v2(1, 0x41, &ipv4),
            v2(1, 0x13, &ipv4),
            v2(1, 0x11, &ipv4[..11]),
            v2(1, 0x21, &[0; 35]),
            v2(1, 0x11, &too_long),
            b"\r\n\r\n\0\r\nQUIX".to_vec(),
        ] {
            assert!(feed(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn never_reads_past_the_header() {
        // Whatever follows the header (a TLS ClientHello, a STUN message)
        // is never asked for.
        let mut h = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 3478\r\n".to_vec();
        let end = h.len();
        h.extend_from_slice(&[0x16, 0x03, 0x01]);
        let mut have = 0;
        while let Ok(Parsed::Need(n)) = parse(&h[..have]) {
            assert!(n <= end);
            have = n;
        }
        assert_eq!(have, end);
    }

    #[test]
    fn balancers_match_mapped_addresses() {
        let b = Balancers::new(vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(b.trusts("10.1.2.3".parse().unwrap()));
        assert!(b.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(b.trusts("::1".parse().unwrap()));
        assert!(!b.trusts("11.1.2.3".parse().unwrap()));
    }
}
