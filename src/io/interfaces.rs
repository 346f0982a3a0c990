//! This host's own addresses, read from its interfaces (getifaddrs(3)), so
//! that the peer policy can tell a relay to another host from one back into
//! this one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every IPv4 and IPv6 address on this host's interfaces, and the
/// subnet-router anycast address of each IPv6 prefix. An error (no
/// interfaces readable) gives none: the configured addresses and loopback
/// still count as own.
pub fn addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we walk read-only and
    // free once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!(
            target: "ferroturn::io::host",
            error = %std::io::Error::last_os_error(),
            "cannot list this host's addresses"
        );
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        let sa = ifa.ifa_addr;
        if !sa.is_null() {
            // SAFETY: the family says which sockaddr type `sa` points to.
            match unsafe { (*sa).sa_family } as i32 {
                libc::AF_INET => {
                    let a = unsafe { &*(sa as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let a = unsafe { &*(sa as *const libc::sockaddr_in6) };
                    let addr = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    out.push(IpAddr::V6(addr));
                    // The subnet-router anycast address of its prefix (RFC
                    // 4291 §2.6.1) is this host's too when it forwards.
                    let mask = ifa.ifa_netmask;
                    if !mask.is_null() {
                        // SAFETY: an AF_INET6 address has an AF_INET6 mask.
                        let m = unsafe { &*(mask as *const libc::sockaddr_in6) };
                        let m = u128::from(Ipv6Addr::from(m.sin6_addr.s6_addr));
                        if m != u128::MAX {
                            out.push(IpAddr::V6(Ipv6Addr::from(u128::from(addr) & m)));
                        }
                    }
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out.sort_unstable();
    out.dedup();
    out
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`, which
/// applies to IPv6 too), where it can be read (not under the unit's
/// `ProcSubset=pid`).
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_range(&text)
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (lo, hi) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ephemeral_range_is_two_numbers() {
        assert_eq!(super::parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(super::parse_range("60999 32768"), None);
        assert_eq!(super::parse_range("x"), None);
        assert!(super::ephemeral_ports().is_some(), "readable here");
    }

    #[test]
    fn loopback_is_among_this_hosts_addresses() {
        let a = super::addresses();
        assert!(a.contains(&"127.0.0.1".parse().unwrap()), "{a:?}");
        assert!(a.contains(&"::1".parse().unwrap()), "{a:?}");
    }
}
