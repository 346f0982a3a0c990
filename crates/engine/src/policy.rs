//! Which peer addresses a client may reach through a relay.
//!
//! A TURN relay sends wherever an authenticated client asks, so by default it
//! refuses the IANA special-purpose ranges (RFC 6890 registries), checks every
//! IPv4 address embedded in an IPv6 one (mapped, translated, compatible,
//! NAT64, 6to4, Teredo) against the IPv4 rules, and keeps an unoverridable
//! core (unspecified, broadcast, multicast) closed whatever `allow` says.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// An address range, `ADDR/PREFIX` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this range (same family only: an IPv4 range never
    /// matches an IPv6 address, whatever it embeds).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// Whether the range is one address (/32, /128).
    fn is_single(&self) -> bool {
        self.prefix == if self.net.is_ipv4() { 32 } else { 128 }
    }

    /// Whether the whole range is loopback (inside 127.0.0.0/8, or ::1).
    fn within_loopback(&self) -> bool {
        match self.net {
            IpAddr::V4(a) => a.is_loopback() && self.prefix >= 8,
            IpAddr::V6(a) => a.is_loopback() && self.prefix == 128,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?} has a prefix length outside 0-{max}")),
            },
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// IANA special-purpose ranges denied unless `allow` opens them.
const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Why a peer was refused: the rule that matched, for the log. Built
/// without allocating, so that a denied packet on the data path costs no
/// heap; the text is only made when it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Unspecified, broadcast or multicast: no configuration opens these.
    Core(&'static str),
    /// One of this server's own listening sockets.
    Listener,
    /// An address of this host outside the live relay ports.
    OwnAddress,
    /// A `peers.deny` entry, maybe matching the IPv4 embedded in an IPv6 peer.
    Deny(Cidr, Option<Ipv4Addr>),
    /// The default special-purpose ranges, maybe through an embedded IPv4.
    Default(Cidr, Option<Ipv4Addr>),
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let embedded = |f: &mut fmt::Formatter<'_>, e: &Option<Ipv4Addr>| match e {
            Some(v4) => write!(f, " (embedded {v4})"),
            None => Ok(()),
        };
        match self {
            Denied::Core(why) => write!(f, "core: {why}"),
            Denied::Listener => f.write_str("core: a listening socket of this server"),
            Denied::OwnAddress => {
                f.write_str("default deny: an address of this host outside the live relay ports")
            }
            Denied::Deny(c, e) => {
                write!(f, "peers.deny {c}")?;
                embedded(f, e)
            }
            Denied::Default(c, e) => {
                write!(f, "default deny {c}")?;
                embedded(f, e)
            }
        }
    }
}

/// The peer policy in force.
///
/// Most of it depends on the peer's IP alone, but not on this host's own
/// addresses: there a relay port that holds a live allocation of this
/// server is reachable (two clients of one server relay to each other), the
/// server's listening sockets never are, and every other port is denied
/// unless `allow` names the address (the relay range usually overlaps the
/// kernel's ephemeral ports, where other processes' sockets live). So a
/// permission or channel for an own address is judged again on every
/// packet, by destination port ([`PeerPolicy::is_own`] says when).
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    defaults: Vec<Cidr>,
    /// Addresses of this host besides loopback: interface addresses and the
    /// configured listen and relay addresses.
    own: Vec<IpAddr>,
    /// Where relay sockets are reachable: the advertised and bind addresses
    /// (an unspecified bind address means every own address of its family).
    relays: Vec<IpAddr>,
    relay_ports: (u16, u16),
    /// The server's own listening sockets (TURN on every transport,
    /// metrics, admin, demo): never reachable. An unspecified address closes
    /// the port on every own address.
    listeners: Vec<SocketAddr>,
}

impl PeerPolicy {
    /// A policy with `allow` and `deny` over the default ranges; `relays`
    /// are the relay addresses (advertised and bound) whose `relay_ports`
    /// may hold live allocations.
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        relays: Vec<IpAddr>,
        relay_ports: (u16, u16),
    ) -> Self {
        let defaults = DEFAULT_DENY
            .iter()
            .map(|s| s.parse().expect("built-in range"))
            .collect();
        let own = relays
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        PeerPolicy {
            allow,
            deny,
            defaults,
            own,
            relays,
            relay_ports,
            listeners: Vec::new(),
        }
    }

    /// Add listening sockets of this server that no peer may be: they stay
    /// closed whatever `allow` says. Their specified addresses count as
    /// this host's own.
    pub fn with_listeners(mut self, listeners: Vec<SocketAddr>) -> Self {
        self.own.extend(
            listeners
                .iter()
                .map(|l| l.ip())
                .filter(|ip| !ip.is_unspecified()),
        );
        self.listeners.extend(listeners);
        self.own.sort_unstable();
        self.own.dedup();
        self
    }

    /// Add addresses of this host (its interfaces' addresses).
    pub fn with_own_addresses(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.own.extend(addrs);
        self.own.sort_unstable();
        self.own.dedup();
        self
    }

    /// Whether `allow` opens `ip`. An address of this host is opened only by
    /// an entry that names it alone, or, for loopback, by one inside the
    /// loopback range (`127.0.0.0/8` opens 127.0.0.1): a broad entry such
    /// as `0.0.0.0/0` or `10.0.0.0/8`, written to reach other hosts, does
    /// not open this one.
    fn allowed(&self, ip: IpAddr, own: bool) -> bool {
        self.allow.iter().any(|c| {
            c.contains(ip) && (!own || c.is_single() || (c.within_loopback() && ip.is_loopback()))
        })
    }

    /// Whether `ip` is an address of this host (loopback, an interface, a
    /// configured address), in any form that embeds one: then what may be
    /// reached there depends on the port, packet by packet.
    pub fn is_own(&self, ip: IpAddr) -> bool {
        let own = |ip: IpAddr| match ip {
            IpAddr::V4(a) if a.is_loopback() || a.is_unspecified() => true,
            IpAddr::V6(a) if a.is_loopback() || a.is_unspecified() => true,
            _ => self.own.contains(&ip),
        };
        own(ip) || embedded_v4(ip).iter().any(|v4| own(IpAddr::V4(v4)))
    }

    /// Whether `peer` is where a relay socket of this server may be: an own
    /// address that relay sockets are bound to, in the relay port range.
    fn relay_target(&self, peer: SocketAddr) -> bool {
        let (lo, hi) = self.relay_ports;
        // An IPv6 form that carries an IPv4 address is no relay socket of
        // ours (the IPv6 relays are V6ONLY), whatever NAT64 may do with it.
        embedded_v4(peer.ip()).n == 0
            && (lo..=hi).contains(&peer.port())
            && self
                .relays
                .iter()
                .any(|r| *r == peer.ip() || (r.is_unspecified() && r.is_ipv4() == peer.is_ipv4()))
    }

    /// Decide whether a client may reach `peer` (RFC 8656 §9.1 leaves the
    /// policy to the server; 403 is the answer for a refusal): the verdict
    /// on its IP ([`PeerPolicy::reach`]), then on its port
    /// ([`PeerPolicy::reaches`]). `live_relay` tells whether a relay port
    /// holds a live allocation of this server now; it is asked only for
    /// this host's own addresses.
    pub fn check(
        &self,
        peer: SocketAddr,
        live_relay: impl Fn(SocketAddr) -> bool,
    ) -> Result<(), Denied> {
        let (reach, why) = self.judge(peer.ip());
        if self.reaches(peer, reach, live_relay) {
            return Ok(());
        }
        match why {
            Some(d @ (Denied::Core(_) | Denied::Deny(..))) => Err(d),
            _ if self.is_listener(peer) => Err(Denied::Listener),
            Some(d) => Err(d),
            None => Err(Denied::OwnAddress),
        }
    }

    /// What may be reached at `ip`, and the rule that refuses the rest:
    /// the IP's half of the policy, worked out once per permission.
    fn judge(&self, ip: IpAddr) -> (Reach, Option<Denied>) {
        let embedded = embedded_v4(ip);
        for a in std::iter::once(ip).chain(embedded.iter().map(IpAddr::V4)) {
            if let Some(rule) = core_rule(a) {
                return (Reach::Closed, Some(Denied::Core(rule)));
            }
        }
        if let Some(c) = self.deny.iter().find(|c| c.contains(ip)) {
            return (Reach::Closed, Some(Denied::Deny(*c, None)));
        }
        let own = self.is_own(ip);
        let refused = self.refusal(ip, own, &embedded);
        let reach = match (own, refused) {
            (false, None) => Reach::Any,
            (false, Some(_)) => Reach::Closed,
            (true, None) => Reach::Open,
            (true, Some(_)) => Reach::LiveRelay,
        };
        (reach, refused)
    }

    /// The rule that refuses `ip` outside the live relay ports, if any:
    /// the defaults unless `allow` opens it, this host's own addresses, and
    /// the IPv4 an IPv6 address carries.
    fn refusal(&self, ip: IpAddr, own: bool, embedded: &Embedded) -> Option<Denied> {
        if !self.allowed(ip, own) {
            if let Some(c) = self.defaults.iter().find(|c| c.contains(ip)) {
                return Some(Denied::Default(*c, None));
            }
            if own {
                return Some(Denied::OwnAddress);
            }
        }
        // An IPv4 address carried inside an IPv6 one is judged by the IPv4
        // deny rules; an IPv4 `allow` entry never opens the embedded form
        // (whatever allowed the IPv6 address as a whole).
        for v4 in embedded.iter() {
            let v4a = IpAddr::V4(v4);
            if let Some(c) = self.deny.iter().find(|c| c.contains(v4a)) {
                return Some(Denied::Deny(*c, Some(v4)));
            }
            if let Some(c) = self.defaults.iter().find(|c| c.contains(v4a)) {
                return Some(Denied::Default(*c, Some(v4)));
            }
            if self.own.contains(&v4a) {
                return Some(Denied::OwnAddress);
            }
        }
        None
    }
}

/// What the policy lets through to one IP, worked out once per permission
/// so that a packet needs at most a port check ([`PeerPolicy::reaches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Another host's address that the policy allows: every port.
    Any,
    /// An address of this host that `allow` opens: every port but the
    /// server's listeners.
    Open,
    /// An address of this host otherwise: relay ports with a live
    /// allocation only.
    LiveRelay,
    /// Nothing.
    Closed,
}

impl PeerPolicy {
    /// [`PeerPolicy::check`] without the port: what may be reached at `ip`.
    pub fn reach(&self, ip: IpAddr) -> Reach {
        self.judge(ip).0
    }

    /// Whether a packet may go to `peer`, whose IP has `reach`: the
    /// per-packet half of [`PeerPolicy::check`]. No allocation; for
    /// [`Reach::Any`] nothing is even looked at.
    #[inline]
    pub fn reaches(
        &self,
        peer: SocketAddr,
        reach: Reach,
        live_relay: impl Fn(SocketAddr) -> bool,
    ) -> bool {
        match reach {
            Reach::Any => true,
            Reach::Closed => false,
            Reach::Open => !self.is_listener(peer),
            Reach::LiveRelay => {
                !self.is_listener(peer) && self.relay_target(peer) && live_relay(peer)
            }
        }
    }

    /// Whether `peer` is one of the server's listening sockets (on an own
    /// address, for a listener on an unspecified one).
    fn is_listener(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip();
        let embedded = embedded_v4(ip);
        self.listeners.iter().any(|l| {
            l.port() == peer.port()
                && (l.ip() == ip
                    || (l.ip().is_unspecified() && self.is_own(ip))
                    || embedded.iter().any(|v4| l.ip() == IpAddr::V4(v4)))
        })
    }
}

/// Addresses no configuration can open.
fn core_rule(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast address"),
        _ => None,
    }
}

/// The IPv4 addresses an IPv6 address carries, at most four, without a
/// heap allocation (the data path asks for them).
#[derive(Debug, Clone, Copy)]
struct Embedded {
    n: usize,
    a: [Ipv4Addr; 4],
}

impl Embedded {
    fn push(&mut self, v4: Ipv4Addr) {
        if self.n < self.a.len() {
            self.a[self.n] = v4;
            self.n += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.a[..self.n].iter().copied()
    }
}

/// Every IPv4 address an IPv6 address carries in a known embedding.
fn embedded_v4(ip: IpAddr) -> Embedded {
    let mut out = Embedded {
        n: 0,
        a: [Ipv4Addr::UNSPECIFIED; 4],
    };
    let IpAddr::V6(v6) = ip else {
        return out;
    };
    let o = v6.octets();
    let seg = v6.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let top96 = u128::from(v6) >> 32;
    // ::ffff:0:0/96 mapped, ::ffff:0:0:0/96 translated, ::/96 compatible
    // (but :: and ::1, which are not IPv4-compatible addresses: RFC 4291
    // §2.5.5.1; the IPv6 rules judge them).
    let low = u32::from(last);
    if top96 == 0xffff || top96 == 0xffff_0000 || (top96 == 0 && low > 1) {
        out.push(last);
    }
    // 64:ff9b::/96 well-known NAT64 and 64:ff9b:1::/48 local-use NAT64.
    if seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2..6] == [0, 0, 0, 0] || seg[2] == 1) {
        out.push(last);
    }
    // 2002::/16 6to4: the IPv4 address follows the prefix.
    if seg[0] == 0x2002 {
        out.push(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // 2001::/32 Teredo: server address, and the client address inverted.
    if seg[0] == 0x2001 && seg[1] == 0 {
        out.push(Ipv4Addr::new(o[4], o[5], o[6], o[7]));
        out.push(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            allow.iter().map(|s| s.parse().unwrap()).collect(),
            vec![],
            vec!["198.51.100.9".parse().unwrap()],
            (49152, 65535),
        )
    }

    fn denied(p: &PeerPolicy, a: &str) -> bool {
        p.check(SocketAddr::new(a.parse().unwrap(), 9), |_| true)
            .is_err()
    }

    fn check(p: &PeerPolicy, a: &str, live: &[u16]) -> Result<(), Denied> {
        p.check(a.parse().unwrap(), |s| live.contains(&s.port()))
    }

    #[test]
    fn bypass_forms_are_denied_by_default() {
        let p = policy(&[]);
        for a in [
            "0.0.0.0",
            "0.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "10.1.2.3",
            "fe80::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(denied(&p, a), "{a} should be denied");
        }
        assert!(!denied(&p, "8.8.8.8"));
        assert!(!denied(&p, "2606:4700::1111"));
        let why = p.check("0.0.0.0:9".parse().unwrap(), |_| true).unwrap_err();
        assert_eq!(why.to_string(), "core: unspecified address");
        let why = p
            .check("[::ffff:10.1.2.3]:9".parse().unwrap(), |_| true)
            .unwrap_err();
        assert_eq!(
            why.to_string(),
            "default deny 10.0.0.0/8 (embedded 10.1.2.3)"
        );
    }

    #[test]
    fn allow_opens_only_the_form_it_names() {
        let p = policy(&["127.0.0.0/8"]);
        assert!(!denied(&p, "127.0.0.1"));
        assert!(denied(&p, "::1"));
        assert!(denied(&p, "::ffff:127.0.0.1"));
        assert!(denied(&p, "0.0.0.0"));
        let p = policy(&["0.0.0.0/0", "::/0"]);
        assert!(denied(&p, "0.0.0.0"));
        assert!(denied(&p, "224.0.0.1"));
        assert!(denied(&p, "::"));
    }

    #[test]
    fn own_relay_addresses_are_reachable_at_live_relay_ports_only() {
        let p = policy(&[]);
        assert_eq!(check(&p, "198.51.100.9:50000", &[50000]), Ok(()));
        // A port of the range without a live allocation may be another
        // process's ephemeral socket.
        assert_eq!(
            check(&p, "198.51.100.9:50002", &[50000]),
            Err(Denied::Default("198.51.100.0/24".parse().unwrap(), None))
        );
        assert!(
            check(&p, "198.51.100.9:80", &[80]).is_err(),
            "outside the range"
        );
        assert!(p.is_own("198.51.100.9".parse().unwrap()));
        assert!(p.is_own("::ffff:198.51.100.9".parse().unwrap()));
        assert!(p.is_own("127.0.0.7".parse().unwrap()));
        assert!(!p.is_own("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn a_public_own_address_is_denied_outside_live_relays_unless_allowed() {
        let public = "8.8.4.4";
        let p = PeerPolicy::new(
            vec![],
            vec![],
            vec![public.parse().unwrap()],
            (50000, 50010),
        );
        assert_eq!(check(&p, "8.8.4.4:50001", &[50001]), Ok(()));
        assert_eq!(check(&p, "8.8.4.4:53", &[]), Err(Denied::OwnAddress));
        assert_eq!(
            check(&p, "8.8.4.4:50003", &[50001]),
            Err(Denied::OwnAddress)
        );
        assert_eq!(check(&p, "8.8.8.8:53", &[]), Ok(()), "not ours: allowed");
        // The operator may open it (an SFU on this host), but never the
        // server's own listeners.
        let p = PeerPolicy::new(
            vec!["8.8.4.4/32".parse().unwrap()],
            vec![],
            vec!["0.0.0.0".parse().unwrap(), public.parse().unwrap()],
            (50000, 50010),
        )
        .with_listeners(vec!["0.0.0.0:3478".parse().unwrap()]);
        assert_eq!(check(&p, "8.8.4.4:5000", &[]), Ok(()));
        assert_eq!(check(&p, "8.8.4.4:3478", &[]), Err(Denied::Listener));
        assert_eq!(
            check(&p, "8.8.8.8:3478", &[]),
            Ok(()),
            "another host's 3478"
        );
    }

    #[test]
    fn a_broad_allow_does_not_open_this_hosts_addresses() {
        let relays = vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
        let p = PeerPolicy::new(
            vec![
                "0.0.0.0/0".parse().unwrap(),
                "::/0".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            vec![],
            relays.clone(),
            (50000, 50010),
        )
        .with_own_addresses(["10.1.2.3".parse().unwrap(), "8.8.4.4".parse().unwrap()]);
        for own in ["127.0.0.1:53", "10.1.2.3:53", "8.8.4.4:53", "[::1]:53"] {
            assert!(check(&p, own, &[]).is_err(), "{own}");
        }
        assert_eq!(check(&p, "10.1.2.4:53", &[]), Ok(()), "another LAN host");
        assert_eq!(check(&p, "8.8.8.8:53", &[]), Ok(()));
        assert_eq!(
            check(&p, "127.0.0.1:50002", &[50002]),
            Ok(()),
            "a live relay"
        );
        // Naming the address, or loopback inside its range, opens it.
        let p = PeerPolicy::new(
            vec![
                "10.1.2.3".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
                "::1".parse().unwrap(),
            ],
            vec![],
            relays,
            (50000, 50010),
        )
        .with_own_addresses(["10.1.2.3".parse().unwrap()]);
        for own in ["127.0.0.1:53", "127.0.0.9:53", "10.1.2.3:53", "[::1]:53"] {
            assert_eq!(check(&p, own, &[]), Ok(()), "{own}");
        }
    }

    #[test]
    fn an_embedded_ipv4_form_is_no_relay_of_ours() {
        let p = PeerPolicy::new(vec![], vec![], vec!["::".parse().unwrap()], (50000, 50010));
        assert!(check(&p, "[64:ff9b::7f00:1]:50002", &[50002]).is_err());
        assert!(check(&p, "[::ffff:127.0.0.1]:50002", &[50002]).is_err());
        assert_eq!(check(&p, "[::1]:50002", &[50002]), Ok(()));
    }

    #[test]
    fn interface_addresses_count_as_own() {
        let p = PeerPolicy::new(
            vec![],
            vec![],
            vec!["0.0.0.0".parse().unwrap()],
            (50000, 50010),
        )
        .with_own_addresses(["9.9.9.9".parse().unwrap()]);
        assert!(p.is_own("9.9.9.9".parse().unwrap()));
        assert_eq!(
            check(&p, "9.9.9.9:50004", &[50004]),
            Ok(()),
            "bound on 0.0.0.0"
        );
        assert_eq!(check(&p, "9.9.9.9:11311", &[]), Err(Denied::OwnAddress));
        // The IPv4 relay socket does not answer on IPv6 addresses.
        let p = p.with_own_addresses(["2606:4700::9".parse().unwrap()]);
        assert_eq!(
            check(&p, "[2606:4700::9]:50004", &[50004]),
            Err(Denied::OwnAddress)
        );
    }

    #[test]
    fn an_ipv6_allow_never_opens_embedded_ipv4() {
        let p = policy(&["::/0"]);
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
        ] {
            assert!(denied(&p, a), "{a} should stay denied");
        }
        assert!(!denied(&p, "2606:4700::1111"));
    }

    #[test]
    fn own_listeners_stay_closed() {
        let p = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![], vec![], (1, 1))
            .with_listeners(vec![
                "127.0.0.1:9641".parse().unwrap(),
                "0.0.0.0:9642".parse().unwrap(),
            ]);
        assert_eq!(check(&p, "127.0.0.1:9641", &[]), Err(Denied::Listener));
        assert_eq!(check(&p, "127.0.0.5:9642", &[]), Err(Denied::Listener));
        assert_eq!(
            check(&p, "[::ffff:127.0.0.1]:9641", &[]),
            Err(Denied::Listener)
        );
        assert_eq!(check(&p, "127.0.0.1:9643", &[]), Ok(()));
    }

    #[test]
    fn reach_and_reaches_agree_with_check_everywhere() {
        let ips = [
            "8.8.8.8",
            "8.8.4.4",
            "9.9.9.9",
            "127.0.0.1",
            "127.0.0.9",
            "10.1.2.3",
            "10.9.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.4.4",
            "::ffff:8.8.8.8",
            "2606:4700::1",
            "2606:4700::9",
            "2002:808:404::1",
            "64:ff9b::808:808",
            "fe80::1",
        ];
        let listeners = vec![
            "0.0.0.0:3478".parse().unwrap(),
            "127.0.0.1:9641".parse().unwrap(),
            "[::]:3478".parse().unwrap(),
            "8.8.4.4:5349".parse().unwrap(),
        ];
        let policies = [
            PeerPolicy::new(
                vec![],
                vec![],
                vec!["8.8.4.4".parse().unwrap(), "0.0.0.0".parse().unwrap()],
                (50000, 50010),
            ),
            PeerPolicy::new(
                vec![
                    "127.0.0.0/8".parse().unwrap(),
                    "8.8.4.4/32".parse().unwrap(),
                    "::/0".parse().unwrap(),
                ],
                vec![
                    "10.9.0.0/16".parse().unwrap(),
                    "2606:4700::9/128".parse().unwrap(),
                ],
                vec!["127.0.0.1".parse().unwrap(), "::".parse().unwrap()],
                (50000, 50010),
            ),
            PeerPolicy::new(
                vec!["0.0.0.0/0".parse().unwrap()],
                vec!["8.8.8.8/32".parse().unwrap()],
                vec![],
                (1, 1),
            ),
        ];
        let ports = [9, 3478, 5349, 9641, 50000, 50001, 50010, 50011];
        let live = |p: SocketAddr| p.port().is_multiple_of(2);
        let mut checked = 0;
        for p in policies {
            let p = p
                .with_listeners(listeners.clone())
                .with_own_addresses(["9.9.9.9".parse().unwrap(), "2606:4700::9".parse().unwrap()]);
            for ip in ips {
                let ip: IpAddr = ip.parse().unwrap();
                let reach = p.reach(ip);
                assert_eq!(
                    reach == Reach::Any,
                    !p.is_own(ip) && p.check(SocketAddr::new(ip, 9), live).is_ok(),
                    "{ip}"
                );
                for port in ports {
                    let peer = SocketAddr::new(ip, port);
                    assert_eq!(
                        p.check(peer, live).is_ok(),
                        p.reaches(peer, reach, live),
                        "{peer} {reach:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 19 * 8);
    }

    #[test]
    fn operator_deny_beats_allow() {
        let p = PeerPolicy::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec!["10.1.0.0/16".parse().unwrap()],
            vec![],
            (1, 1),
        );
        assert!(!denied(&p, "10.2.0.1"));
        assert!(denied(&p, "10.1.0.1"));
    }

    #[test]
    fn malformed_cidrs_are_refused() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }
}
