//! NAT behaviour discovery (RFC 5780): what a Binding on each of the four
//! sockets gets, where the answer leaves from and goes to, and the bound
//! on its size.

use super::*;
use crate::engine::discovery::{ANSWER_OVERHEAD, NatSockets};

/// Listener 0 is the primary (192.0.2.1:3478); 1, 2 and 3 the others
/// (other address 192.0.2.2, other port 3479); listener 4 is a plain UDP
/// listener elsewhere.
fn nat() -> NatSockets {
    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    NatSockets {
        sockets: [
            (0, a("192.0.2.1:3478")),
            (1, a("192.0.2.1:3479")),
            (2, a("192.0.2.2:3478")),
            (3, a("192.0.2.2:3479")),
        ],
    }
}

fn engine(with_nat: bool) -> Engine {
    let mut cfg = config((50000..50010).collect());
    if with_nat {
        cfg.nat_behaviour = Some(nat());
        cfg.stun_only = nat().extra_listeners().to_vec();
    }
    cfg.live.limits.unauthenticated_rate = 100;
    Engine::new(cfg, Instant::now(), UNIX0)
}

fn via(l: u16, port: u16) -> ClientAddr {
    ClientAddr {
        remote: SocketAddr::new("203.0.113.5".parse().unwrap(), port),
        via: Via::Udp(l),
    }
}

/// Every Transmit of one packet: where it goes and what it says.
fn answers(e: &mut Engine, c: ClientAddr, p: &[u8]) -> Vec<(ClientAddr, Vec<u8>)> {
    assert!(e.handle_client(Instant::now(), c, p).is_none());
    let mut out = Vec::new();
    while let Some(o) = e.poll_output() {
        if let Output::Transmit { to, data } = o {
            out.push((to, data));
        }
    }
    out
}

fn one(e: &mut Engine, c: ClientAddr, p: &[u8]) -> (ClientAddr, Message) {
    let mut a = answers(e, c, p);
    assert_eq!(a.len(), 1, "one answer per request");
    let (to, data) = a.pop().unwrap();
    (to, wire::decode(&data).expect("a STUN answer"))
}

fn plain(m: &Message, t: AttrType) -> Option<SocketAddr> {
    let v = wire::attr(m, t)?;
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip: std::net::IpAddr = match v[1] {
        1 => <[u8; 4]>::try_from(&v[4..8]).ok()?.into(),
        _ => <[u8; 16]>::try_from(&v[4..20]).ok()?.into(),
    };
    Some(SocketAddr::new(ip, port))
}

fn change(ip: bool, port: bool) -> [u8; 4] {
    [0, 0, 0, (u8::from(ip) << 2) | (u8::from(port) << 1)]
}

fn binding() -> Req {
    Req::new(METHOD_BINDING)
}

#[test]
fn every_socket_answers_with_response_origin_and_other_address() {
    let mut e = engine(true);
    let n = nat();
    for (l, local) in n.sockets {
        let c = via(l, 40000);
        let (to, r) = one(&mut e, c, &binding().fingerprinted());
        assert_eq!(to, c, "answered from the socket it came to");
        assert_eq!(code(&r), None);
        assert!(wire::has_fingerprint(&r));
        assert_eq!(
            wire::read_xor_address(
                wire::attr(&r, ATTR_XORMAPPED_ADDRESS).unwrap(),
                &r.transaction_id.0
            ),
            Some(c.remote)
        );
        assert_eq!(plain(&r, ATTR_RESPONSE_ORIGIN), Some(local));
        // The other address and the other port, from where it arrived.
        let pos = n.position(c.via).unwrap();
        assert_eq!(plain(&r, ATTR_OTHER_ADDRESS), Some(n.sockets[pos ^ 3].1));
    }
}

#[test]
fn change_request_picks_the_socket_the_answer_leaves_from() {
    let mut e = engine(true);
    let n = nat();
    for at in 0..4 {
        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = via(n.sockets[at].0, 40001);
            let req = binding()
                .attr(ATTR_CHANGE_REQUEST, &change(ip, port))
                .bytes();
            let (to, r) = one(&mut e, c, &req);
            let flip = (usize::from(ip) << 1) | usize::from(port);
            let (l, origin) = n.sockets[at ^ flip];
            assert_eq!(to.via, Via::Udp(l), "from {at}, ip {ip}, port {port}");
            assert_eq!(to.remote, c.remote, "always to the client");
            assert_eq!(plain(&r, ATTR_RESPONSE_ORIGIN), Some(origin));
            assert_eq!(plain(&r, ATTR_OTHER_ADDRESS), Some(n.sockets[at ^ 3].1));
        }
    }
}

#[test]
fn response_port_answers_that_port_of_the_clients_own_ip() {
    let mut e = engine(true);
    let c = via(0, 40002);
    let req = binding()
        .attr(ATTR_RESPONSE_PORT, &[0x9c, 0x40, 0, 0])
        .attr(ATTR_CHANGE_REQUEST, &change(true, false))
        .bytes();
    let (to, r) = one(&mut e, c, &req);
    assert_eq!(to.remote, SocketAddr::new(c.remote.ip(), 40000));
    assert_eq!(to.via, Via::Udp(2));
    // XOR-MAPPED-ADDRESS is still where the request came from.
    assert_eq!(
        wire::read_xor_address(
            wire::attr(&r, ATTR_XORMAPPED_ADDRESS).unwrap(),
            &r.transaction_id.0
        ),
        Some(c.remote)
    );
    // Port 0 and a short value are malformed: 400, to the source.
    for bad in [&[0u8, 0, 0, 0][..], &[0x9c, 0x40][..]] {
        let (to, r) = one(&mut e, c, &binding().attr(ATTR_RESPONSE_PORT, bad).bytes());
        assert_eq!(to, c);
        assert_eq!(code(&r), Some(400));
    }
    let (_, r) = one(
        &mut e,
        c,
        &binding().attr(ATTR_CHANGE_REQUEST, &[4, 0]).bytes(),
    );
    assert_eq!(code(&r), Some(400));
}

#[test]
fn padding_fills_the_answer_up_to_the_request_and_no_further() {
    let mut e = engine(true);
    let c = via(3, 40003);
    for pad in [0usize, 1, 3, 40, 1500] {
        let req = binding()
            .attr(ATTR_PADDING, &vec![0x55; pad])
            .fingerprinted();
        let (to, r) = one(&mut e, c, &req);
        assert_eq!(to, c);
        assert_eq!(code(&r), None);
        let got = wire::attr(&r, ATTR_PADDING).expect("PADDING answered with PADDING");
        assert!(got.len() <= pad, "pad {pad}: {}", got.len());
        assert!(
            r.raw.len() <= req.len().max(104),
            "pad {pad}: {}",
            r.raw.len()
        );
        if pad >= 100 {
            // Filled to within 4 bytes of the request.
            assert!(req.len() - r.raw.len() < 4, "pad {pad}: {}", r.raw.len());
        }
    }
}

/// A spoofer's best: any mix of the attributes, from a victim's address,
/// gets at most one answer, to the victim's IP, at most ANSWER_OVERHEAD
/// bytes bigger than the request; RESPONSE-PORT with PADDING gets 400.
#[test]
fn no_request_gets_an_answer_more_than_the_fixed_overhead_larger() {
    let mut e = engine(true);
    let victim: std::net::IpAddr = "203.0.113.5".parse().unwrap();
    let mut largest = 0isize;
    for l in 0..4 {
        for pad in [None, Some(0usize), Some(8), Some(1400)] {
            for rp in [None, Some(9u16)] {
                for flags in [None, Some(change(true, true))] {
                    for fp in [false, true] {
                        let mut r = binding();
                        if let Some(p) = pad {
                            r = r.attr(ATTR_PADDING, &vec![1; p]);
                        }
                        if let Some(p) = rp {
                            r = r.attr(ATTR_RESPONSE_PORT, &[0, p as u8, 0, 0]);
                        }
                        if let Some(f) = flags {
                            r = r.attr(ATTR_CHANGE_REQUEST, &f);
                        }
                        let req = if fp { r.fingerprinted() } else { r.bytes() };
                        let out = answers(&mut e, via(l, 5353), &req);
                        assert!(out.len() <= 1);
                        for (to, data) in out {
                            assert_eq!(to.remote.ip(), victim);
                            assert!(data.len() <= req.len() + ANSWER_OVERHEAD);
                            largest = largest.max(data.len() as isize - req.len() as isize);
                            let m = wire::decode(&data).unwrap();
                            if pad.is_some() && rp.is_some() {
                                assert_eq!(code(&m), Some(400));
                            }
                        }
                    }
                }
            }
        }
    }
    // IPv4 here: the IPv6 forms add 36 bytes more.
    assert!(
        largest > 0 && largest as usize <= ANSWER_OVERHEAD,
        "{largest}"
    );
}

#[test]
fn turn_requests_on_the_extra_sockets_get_400() {
    let mut e = engine(true);
    for l in [1, 2, 3] {
        let (to, r) = one(
            &mut e,
            via(l, 40004),
            &Req::new(METHOD_ALLOCATE).transport(17).bytes(),
        );
        assert_eq!(to.via, Via::Udp(l));
        assert_eq!(code(&r), Some(400), "listener {l}");
    }
    // The primary listener serves TURN as before (401 challenge).
    let (_, r) = one(
        &mut e,
        via(0, 40004),
        &Req::new(METHOD_ALLOCATE).transport(17).bytes(),
    );
    assert_eq!(code(&r), Some(401));
}

#[test]
fn without_discovery_its_attributes_get_420_and_answers_stay_plain() {
    // Off, and on but on another listener, and over TCP.
    let (off, on) = (false, true);
    let tcp = ClientAddr {
        remote: via(0, 1).remote,
        via: Via::Stream {
            listener: 0,
            conn: 1,
            tls: false,
        },
    };
    for (nat, c) in [(off, via(0, 40005)), (on, via(4, 40005)), (on, tcp)] {
        let e = &mut engine(nat);
        for t in [ATTR_CHANGE_REQUEST, ATTR_RESPONSE_PORT, ATTR_PADDING] {
            let (to, r) = one(e, c, &binding().attr(t, &[0, 0, 0, 6]).bytes());
            assert_eq!(to, c);
            assert_eq!(code(&r), Some(420), "{t}");
            let unknown = wire::attr(&r, ATTR_UNKNOWN_ATTRIBUTES).unwrap();
            assert_eq!(unknown, &t.0.to_be_bytes());
        }
        let (_, r) = one(e, c, &binding().bytes());
        assert_eq!(code(&r), None);
        assert!(wire::attr(&r, ATTR_OTHER_ADDRESS).is_none());
        assert!(wire::attr(&r, ATTR_RESPONSE_ORIGIN).is_none());
    }
}

#[test]
fn errors_on_discovery_sockets_count_against_the_unauthenticated_rate() {
    let mut e = engine(true);
    let bad = binding()
        .attr(ATTR_PADDING, &[0; 4])
        .attr(ATTR_RESPONSE_PORT, &[0, 9, 0, 0])
        .bytes();
    let mut answered = 0;
    for i in 0..300u16 {
        answered += answers(&mut e, via(i % 4, 6000 + i), &bad).len();
    }
    // The limiter's burst is one second's worth (100) at 100/s.
    assert!((100..=110).contains(&answered), "{answered}");
}

/// The bound holds where answers are largest: IPv6 addresses in all
/// three address attributes, FINGERPRINT, and the smallest requests.
#[test]
fn ipv6_answers_stay_within_the_overhead_too() {
    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let mut cfg = config((50000..50010).collect());
    cfg.nat_behaviour = Some(NatSockets {
        sockets: [
            (0, a("[2001:db8::1]:3478")),
            (1, a("[2001:db8::1]:3479")),
            (2, a("[2001:db8::2]:3478")),
            (3, a("[2001:db8::2]:3479")),
        ],
    });
    let mut e = Engine::new(cfg, Instant::now(), UNIX0);
    let c = ClientAddr {
        remote: a("[2001:db8:ffff::9]:5000"),
        via: Via::Udp(3),
    };
    let mut largest = 0;
    for req in [
        binding().bytes(),
        binding().fingerprinted(),
        binding().attr(ATTR_PADDING, &[]).bytes(),
        binding().attr(ATTR_PADDING, &[]).fingerprinted(),
    ] {
        let (_, r) = one(&mut e, c, &req);
        assert_eq!(code(&r), None);
        assert_eq!(plain(&r, ATTR_OTHER_ADDRESS), Some(a("[2001:db8::1]:3478")));
        largest = largest.max(r.raw.len() - req.len());
    }
    assert_eq!(largest, ANSWER_OVERHEAD, "the bound is reached, not passed");
}
