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

/// Why a peer was refused: the rule that matched, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)
    }
}

/// The peer policy in force.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    defaults: Vec<Cidr>,
    /// Our own relay addresses and port range: always reachable, so that two
    /// clients of this server can relay to each other.
    own_relays: Vec<IpAddr>,
    relay_ports: (u16, u16),
    /// The server's own admin and metrics listeners: never reachable.
    core_deny: Vec<SocketAddr>,
}

impl PeerPolicy {
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        own_relays: Vec<IpAddr>,
        relay_ports: (u16, u16),
    ) -> Self {
        let defaults = DEFAULT_DENY
            .iter()
            .map(|s| s.parse().expect("built-in range"))
            .collect();
        PeerPolicy {
            allow,
            deny,
            defaults,
            own_relays,
            relay_ports,
            core_deny: Vec::new(),
        }
    }

    /// Add listeners of this server that no peer may be (admin, metrics):
    /// they stay closed whatever `allow` says. An unspecified listener
    /// address closes its port on every address.
    pub fn with_core_deny(mut self, listeners: Vec<SocketAddr>) -> Self {
        self.core_deny = listeners;
        self
    }

    /// Decide whether a client may reach `peer` (RFC 8656 §9.1 leaves the
    /// policy to the server; 403 is the answer for a refusal).
    pub fn check(&self, peer: SocketAddr) -> Result<(), Denied> {
        let ip = peer.ip();
        let embedded = embedded_v4(ip);
        for v4 in std::iter::once(ip).chain(embedded.iter().map(|&a| IpAddr::V4(a))) {
            if let Some(rule) = core_rule(v4) {
                return Err(Denied { rule: rule.into() });
            }
        }
        let own_listener = self.core_deny.iter().any(|l| {
            l.port() == peer.port()
                && (l.ip() == ip
                    || l.ip().is_unspecified()
                    || embedded.iter().any(|&v4| l.ip() == IpAddr::V4(v4)))
        });
        if own_listener {
            return Err(Denied {
                rule: "core: this server's own admin or metrics listener".into(),
            });
        }
        if let Some(c) = self.deny.iter().find(|c| c.contains(ip)) {
            return Err(Denied {
                rule: format!("peers.deny {c}"),
            });
        }
        if self.own_relays.contains(&ip)
            && (self.relay_ports.0..=self.relay_ports.1).contains(&peer.port())
        {
            return Ok(());
        }
        let allowed = self.allow.iter().any(|c| c.contains(ip));
        if !allowed {
            if let Some(c) = self.defaults.iter().find(|c| c.contains(ip)) {
                return Err(Denied {
                    rule: format!("default deny {c}"),
                });
            }
        }
        // An IPv4 address carried inside an IPv6 one is judged by the IPv4
        // deny rules; an IPv4 `allow` entry never opens the embedded form.
        for v4 in embedded {
            let v4 = IpAddr::V4(v4);
            if let Some(c) = self.deny.iter().find(|c| c.contains(v4)) {
                return Err(Denied {
                    rule: format!("peers.deny {c} (embedded {v4})"),
                });
            }
            // Whatever allowed the IPv6 address as a whole: an embedded
            // IPv4 is only ever opened by an IPv4 `allow` in its own form,
            // which does not apply here.
            if let Some(c) = self.defaults.iter().find(|c| c.contains(v4)) {
                return Err(Denied {
                    rule: format!("default deny {c} (embedded {v4})"),
                });
            }
        }
        Ok(())
    }
}

/// Addresses no configuration can open.
fn core_rule(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("core: unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("core: broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("core: multicast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("core: unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("core: multicast address"),
        _ => None,
    }
}

/// Every IPv4 address an IPv6 address carries in a known embedding.
fn embedded_v4(ip: IpAddr) -> Vec<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return Vec::new();
    };
    let o = v6.octets();
    let seg = v6.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut out = Vec::new();
    let top96 = u128::from(v6) >> 32;
    // ::ffff:0:0/96 mapped, ::ffff:0:0:0/96 translated, ::/96 compatible
    // (but :: and ::1, which are not IPv4-compatible addresses: RFC 4291
    // §2.5.5.1; the IPv6 rules judge them).
    let low = u32::from(last);
    if top96 == 0xffff || top96 == 0xffff_0000 || (top96 == 0 && low > 1) {
        out.push(last);
    }
    // 64:ff9b::/96 well-known NAT64 and 64:ff9b:1::/48 local-use NAT64.
    if (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0])
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
    {
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
        p.check(SocketAddr::new(a.parse().unwrap(), 9)).is_err()
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
    fn own_relay_addresses_are_reachable() {
        let p = policy(&[]);
        assert!(p.check("198.51.100.9:50000".parse().unwrap()).is_ok());
        assert!(p.check("198.51.100.9:80".parse().unwrap()).is_err());
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
    fn own_admin_listeners_stay_closed() {
        let p = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![], vec![], (1, 1))
            .with_core_deny(vec![
                "127.0.0.1:9641".parse().unwrap(),
                "0.0.0.0:9642".parse().unwrap(),
            ]);
        assert!(p.check("127.0.0.1:9641".parse().unwrap()).is_err());
        assert!(p.check("127.0.0.5:9642".parse().unwrap()).is_err());
        assert!(p.check("127.0.0.1:9643".parse().unwrap()).is_ok());
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
