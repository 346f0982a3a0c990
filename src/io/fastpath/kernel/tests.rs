//! The XDP program on crafted frames (BPF_PROG_TEST_RUN, as root): the
//! rewrite byte by byte with checksums recomputed here, and every case
//! that must reach the stack untouched. The route lookup is off in these
//! runs (`unit_test`): frames go back out with MACs d0:.. and 50:...

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

const PASS: u32 = 2;
const DROP: u32 = 1;
const TX: u32 = 3;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Ones' complement sum of `data`, folded, not inverted.
fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += w as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// The UDP checksum of `udp` (header and data) between `src` and `dst`.
fn udp_check(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut pseudo = ip_bytes(src);
    pseudo.extend(ip_bytes(dst));
    if src.is_ipv4() {
        pseudo.extend([0, 17]);
        pseudo.extend((udp.len() as u16).to_be_bytes());
    } else {
        pseudo.extend((udp.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, 17]);
    }
    let mut zeroed = udp.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    let s = sum(&pseudo) + sum(&zeroed);
    let s = (s & 0xffff) + (s >> 16);
    let c = !(s as u16);
    if c == 0 { 0xffff } else { c }
}

/// An Ethernet frame carrying a UDP datagram with `payload`, checksummed
/// (`checksum` false: IPv4's "none").
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8], checksum: bool) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend(src.port().to_be_bytes());
    udp.extend(dst.port().to_be_bytes());
    udp.extend(((8 + payload.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    if checksum {
        let c = udp_check(src.ip(), dst.ip(), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = vec![0xaa; 6];
    f.extend([0xbb; 6]);
    if src.is_ipv4() {
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 61, 17, 0, 0];
        ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip.extend(ip_bytes(src.ip()));
        ip.extend(ip_bytes(dst.ip()));
        let c = !(sum(&ip) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend(ip);
    } else {
        f.extend([0x86, 0xdd]);
        f.extend([0x60, 0, 0, 0]);
        f.extend((udp.len() as u16).to_be_bytes());
        f.extend([17, 61]);
        f.extend(ip_bytes(src.ip()));
        f.extend(ip_bytes(dst.ip()));
    }
    f.extend(udp);
    f
}

/// A frame taken apart, its checksums checked.
#[derive(Debug)]
struct Parsed {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
    udp_check: u16,
}

fn parse(f: &[u8]) -> Parsed {
    assert_eq!(&f[0..6], &[0xd0; 6], "destination MAC from the route");
    assert_eq!(&f[6..12], &[0x50; 6], "source MAC from the route");
    let (src, dst, l3) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(sum(ip), 0xffff, "IPv4 header checksum");
            assert_eq!(
                u16::from_be_bytes([ip[2], ip[3]]) as usize,
                f.len() - 14,
                "total length"
            );
            assert_eq!(ip[8], 64, "TTL");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), 34)
        }
        0x86dd => {
            let ip = &f[14..54];
            assert_eq!(
                u16::from_be_bytes([ip[4], ip[5]]) as usize,
                f.len() - 54,
                "payload length"
            );
            assert_eq!(ip[6], 17);
            assert_eq!(ip[7], 64, "hop limit");
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), 54)
        }
        t => panic!("ethertype {t:#x}"),
    };
    let udp = &f[l3..];
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        udp.len(),
        "UDP length"
    );
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    if check != 0 || dst.is_ipv6() {
        assert_eq!(check, udp_check(src, dst, udp), "UDP checksum");
    }
    Parsed {
        src: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
        udp_check: check,
    }
}

/// A channel in the program: client ⇄ listener, relay ⇄ peer.
#[derive(Clone, Copy)]
struct Bound {
    client: SocketAddr,
    listener: SocketAddr,
    relay: SocketAddr,
    peer: SocketAddr,
    channel: u16,
    slot: u32,
}

fn bind(k: &Kernel, b: &Bound, expires: Instant) {
    let clock = Clock::now();
    let to_peer = FlowTarget {
        src: b.relay,
        dst: b.peer,
        channel: 0,
        chan_slot: b.slot,
        alloc_slot: b.slot,
        expires,
    };
    let ck = FlowKey {
        src: b.client,
        dst: b.listener,
        channel: b.channel,
    };
    k.put(&ck, &to_peer, &clock).unwrap();
    let to_client = FlowTarget {
        src: b.listener,
        dst: b.client,
        channel: b.channel,
        ..to_peer
    };
    let pk = FlowKey {
        src: b.peer,
        dst: b.relay,
        channel: 0,
    };
    k.put(&pk, &to_client, &clock).unwrap();
}

fn load() -> Kernel {
    Kernel::load_as(true).expect("loading the XDP program (these tests run as root)")
}

fn v4(slot: u32) -> Bound {
    Bound {
        client: sa("198.51.100.7:40000"),
        listener: sa("192.0.2.1:3478"),
        relay: sa("192.0.2.1:50000"),
        peer: sa("203.0.113.9:9000"),
        channel: 0x4000,
        slot,
    }
}

fn v6(slot: u32) -> Bound {
    Bound {
        client: sa("[2001:db8:1::7]:40000"),
        listener: sa("[2001:db8::1]:3478"),
        relay: sa("[2001:db8::1]:50001"),
        peer: sa("[2001:db8:2::9]:9001"),
        channel: 0x7fff,
        slot,
    }
}

fn channel_data(n: u16, data: &[u8], pad: usize) -> Vec<u8> {
    let mut m = n.to_be_bytes().to_vec();
    m.extend((data.len() as u16).to_be_bytes());
    m.extend(data);
    m.extend(std::iter::repeat_n(0, pad));
    m
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn channel_data_becomes_a_datagram_to_the_peer_and_back() {
    let k = load();
    for (b, data) in [(v4(1), &b"hello"[..]), (v6(2), &b"odd-length payload!"[..])] {
        bind(&k, &b, later());
        for checksum in [true, false] {
            if !checksum && b.client.is_ipv6() {
                continue;
            }
            let (ret, out) = k
                .test_run(&frame(
                    b.client,
                    b.listener,
                    &channel_data(b.channel, data, 0),
                    checksum,
                ))
                .unwrap();
            assert_eq!(ret, TX);
            let p = parse(&out);
            assert_eq!((p.src, p.dst), (b.relay, b.peer));
            assert_eq!(p.payload, data);
            assert_eq!(p.udp_check != 0, checksum, "a zero (IPv4 only) stays zero");

            let (ret, out) = k.test_run(&frame(b.peer, b.relay, data, checksum)).unwrap();
            assert_eq!(ret, TX);
            let p = parse(&out);
            assert_eq!((p.src, p.dst), (b.listener, b.client));
            // Unpadded over UDP, as the userspace path frames it.
            assert_eq!(p.payload, channel_data(b.channel, data, 0));
        }
    }
}

#[test]
fn padding_leaves_with_the_channel_header_and_counts_are_exact() {
    let k = load();
    let b = v4(3);
    bind(&k, &b, later());
    // Padded to 4 (allowed over UDP, RFC 8656 §12.5): IPv4's checksum
    // goes to zero rather than counting padding it no longer carries.
    let (ret, out) = k
        .test_run(&frame(
            b.client,
            b.listener,
            &channel_data(b.channel, b"abcde", 3),
            true,
        ))
        .unwrap();
    assert_eq!(ret, TX);
    let p = parse(&out);
    assert_eq!(p.payload, b"abcde");
    assert_eq!(p.udp_check, 0);
    for len in [1, 100, 1000] {
        let data = vec![7u8; len];
        assert_eq!(
            k.test_run(&frame(b.peer, b.relay, &data, true)).unwrap().0,
            TX
        );
    }
    let c = k.count(3);
    assert_eq!(c.packets, [1, 3]);
    assert_eq!(c.bytes, [5, 1101]);
    k.zero(3);
    assert_eq!(k.count(3), ChanCount::default());
    // IPv6 cannot lose padding that its checksum covers: the stack has it.
    let b = v6(4);
    bind(&k, &b, later());
    let f = frame(
        b.client,
        b.listener,
        &channel_data(b.channel, b"abcde", 3),
        true,
    );
    let (ret, out) = k.test_run(&f).unwrap();
    assert_eq!((ret, out), (PASS, f));
}

#[test]
fn everything_else_reaches_the_stack_untouched() {
    let k = load();
    let b = v4(5);
    bind(&k, &b, later());
    let cd = channel_data(b.channel, b"data", 0);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        // A STUN Binding request (first two bits 00).
        (
            "STUN",
            frame(
                b.client,
                b.listener,
                &[
                    0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                ],
                true,
            ),
        ),
        (
            "unbound channel",
            frame(
                b.client,
                b.listener,
                &channel_data(0x4001, b"data", 0),
                true,
            ),
        ),
        (
            "another client",
            frame(sa("198.51.100.8:40000"), b.listener, &cd, true),
        ),
        (
            "another listener",
            frame(b.client, sa("192.0.2.1:3479"), &cd, true),
        ),
        (
            "another peer port",
            frame(sa("203.0.113.9:9001"), b.relay, b"data", true),
        ),
        (
            "length past the datagram",
            frame(
                b.client,
                b.listener,
                &channel_data(b.channel, b"data", 0)[..7],
                true,
            ),
        ),
        (
            "more than padding after the data",
            frame(
                b.client,
                b.listener,
                &channel_data(b.channel, b"data", 4),
                true,
            ),
        ),
        (
            "short ChannelData",
            frame(b.client, b.listener, &[0x40, 0], true),
        ),
    ];
    // A fragment (MF set), IP options, a truncated frame, a wrong length.
    let mut frag = frame(b.client, b.listener, &cd, true);
    frag[20] |= 0x20;
    cases.push(("fragment", frag));
    let mut opts = frame(b.client, b.listener, &cd, true);
    opts[14] = 0x46;
    cases.push(("IP options", opts));
    let whole = frame(b.client, b.listener, &cd, true);
    cases.push(("truncated", whole[..40].to_vec()));
    let mut udp_len = whole.clone();
    udp_len[39] += 1;
    cases.push(("UDP length", udp_len));
    cases.push(("Ethernet only", whole[..14].to_vec()));
    let mut arp = whole.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    cases.push(("ARP", arp));
    for (what, f) in cases {
        let (ret, out) = k.test_run(&f).unwrap();
        assert_eq!((ret, &out), (PASS, &f), "{what}");
    }
    assert_eq!(k.count(5), ChanCount::default(), "nothing counted");
    // An entry past its expiry: the stack has it, even before userspace
    // deletes it.
    let b = v4(6);
    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    bind(
        &k,
        &Bound {
            peer: sa("203.0.113.10:9000"),
            client: sa("198.51.100.9:1"),
            ..b
        },
        past,
    );
    let f = frame(sa("203.0.113.10:9000"), b.relay, b"late", true);
    assert_eq!(k.test_run(&f).unwrap(), (PASS, f));
}

#[test]
fn the_ceilings_drop_what_is_over_them() {
    let k = load();
    let b = Bound {
        client: sa("198.51.100.20:40000"),
        peer: sa("203.0.113.20:9000"),
        ..v4(7)
    };
    bind(&k, &b, later());
    // 5 packets a second: a full bucket passes 5, then drops.
    k.ceilings(7, 5, 0).unwrap();
    let f = frame(b.peer, b.relay, b"x", true);
    let verdicts: Vec<u32> = (0..8).map(|_| k.test_run(&f).unwrap().0).collect();
    assert_eq!(verdicts[..5], [TX; 5]);
    assert_eq!(verdicts[5..], [DROP; 3]);
    assert_eq!(k.limited(7), [0, 3]);
    assert_eq!(
        k.count(7).packets,
        [0, 5],
        "dropped packets are not counted as relayed"
    );
    // The other direction has a bucket of its own; bytes: 10 a second.
    k.ceilings(7, 0, 10).unwrap();
    let f = frame(
        b.client,
        b.listener,
        &channel_data(b.channel, b"12345678", 0),
        true,
    );
    assert_eq!(k.test_run(&f).unwrap().0, TX);
    assert_eq!(k.test_run(&f).unwrap().0, DROP);
    assert_eq!(k.limited(7), [1, 0]);
}

#[test]
fn each_write_of_what_userspace_relayed_is_debited_once() {
    let k = load();
    let b = Bound {
        client: sa("198.51.100.22:40000"),
        peer: sa("203.0.113.22:9000"),
        ..v4(9)
    };
    bind(&k, &b, later());
    // 10 packets a second to the client: a full bucket holds 10.
    k.ceilings(9, 10, 0).unwrap();
    let f = frame(b.peer, b.relay, b"x", true);
    // 2 relayed in userspace: the next packet pays for them (7 left), the
    // one after only for itself (6 left).
    k.relayed_in_userspace(9, Clock::now().monotonic_ns, [0, 2], [0, 20])
        .unwrap();
    assert_eq!(k.test_run(&f).unwrap().0, TX);
    assert_eq!(k.test_run(&f).unwrap().0, TX);
    // 2 more (4 in all): 3 left after the next packet.
    let at = Clock::now().monotonic_ns;
    k.relayed_in_userspace(9, at, [0, 4], [0, 40]).unwrap();
    assert_eq!(k.test_run(&f).unwrap().0, TX);
    // 1 more, written with the same time: still debited (1 left after
    // the next packet), then 1 packet passes and the next is over.
    k.relayed_in_userspace(9, at, [0, 5], [0, 50]).unwrap();
    let verdicts: Vec<u32> = (0..4).map(|_| k.test_run(&f).unwrap().0).collect();
    assert_eq!(verdicts, [TX, TX, DROP, DROP]);
    assert_eq!(k.limited(9), [0, 2]);
    assert_eq!(k.count(9).packets, [0, 5]);
}

#[test]
fn what_userspace_relayed_comes_off_the_kernels_buckets() {
    let k = load();
    let b = Bound {
        client: sa("198.51.100.21:40000"),
        peer: sa("203.0.113.21:9000"),
        ..v4(8)
    };
    bind(&k, &b, later());
    // 10 packets a second; userspace relayed 7 to the client of them.
    k.ceilings(8, 10, 0).unwrap();
    let now = Clock::now().monotonic_ns;
    k.relayed_in_userspace(8, now, [0, 7], [0, 700]).unwrap();
    let f = frame(b.peer, b.relay, b"x", true);
    let verdicts: Vec<u32> = (0..5).map(|_| k.test_run(&f).unwrap().0).collect();
    assert_eq!(verdicts, [TX, TX, TX, DROP, DROP], "3 of the second left");
    // 25 more in userspace: the bucket owes a second's worth (its most),
    // nothing passes; the same total written again takes nothing more.
    k.relayed_in_userspace(8, now, [0, 32], [0, 3200]).unwrap();
    assert_eq!(k.test_run(&f).unwrap().0, DROP);
    assert_eq!(k.limited(8), [0, 3]);
    // The other direction has its own bucket: 10 pass.
    let c = frame(
        b.client,
        b.listener,
        &channel_data(b.channel, b"1234", 0),
        true,
    );
    let verdicts: Vec<u32> = (0..11).map(|_| k.test_run(&c).unwrap().0).collect();
    assert_eq!(verdicts[..10], [TX; 10]);
    assert_eq!(verdicts[10], DROP);
    // New ceilings start the slot over: nothing relayed in userspace.
    k.ceilings(8, 10, 0).unwrap();
    assert_eq!(k.test_run(&f).unwrap().0, TX);
}

/// The program's own time per relayed packet, as the kernel times
/// BPF_PROG_TEST_RUN's repetitions: two flows feed each other (a peer's
/// datagram becomes ChannelData that the other flow unwraps into the
/// same datagram), so that every repetition relays. A measurement, not a
/// check of speed: `cargo test --features fastpath --lib
/// program_time_per_packet -- --ignored --nocapture` (as root).
#[test]
#[ignore]
fn program_time_per_packet() {
    let k = load();
    let (peer, relay) = (sa("203.0.113.40:9000"), sa("192.0.2.1:50040"));
    let (listener, client) = (sa("192.0.2.1:3478"), sa("198.51.100.40:40000"));
    let clock = Clock::now();
    let slot = 10;
    let target = |src, dst, channel| FlowTarget {
        src,
        dst,
        channel,
        chan_slot: slot,
        alloc_slot: slot,
        expires: later(),
    };
    let key = |src, dst, channel| FlowKey { src, dst, channel };
    k.put(
        &key(peer, relay, 0),
        &target(listener, client, 0x4000),
        &clock,
    )
    .unwrap();
    k.put(
        &key(listener, client, 0x4000),
        &target(peer, relay, 0),
        &clock,
    )
    .unwrap();
    let f = frame(peer, relay, &[7; 200], true);
    for (packet_rate, bandwidth) in [(0, 0), (1_000_000_000, 10_000_000_000)] {
        k.ceilings(slot, packet_rate, bandwidth).unwrap();
        k.zero(slot);
        let runs = 4_000_000;
        let mut out = vec![0u8; f.len() + 64];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(&f),
            data_out: Some(&mut out),
            repeat: runs,
            ..Default::default()
        };
        let o = k.program().test_run(input).unwrap();
        assert_eq!(o.return_value, TX);
        let c = k.count(slot);
        assert_eq!(c.packets, [runs as u64 / 2; 2], "every repetition relayed");
        println!(
            "ceilings {packet_rate} pkt/s, {bandwidth} B/s: {} ns per packet",
            o.duration.as_nanos()
        );
    }
}
