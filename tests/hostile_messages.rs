//! Hostile STUN messages against a running server, over real UDP sockets
//! on loopback: the largest datagram packed with ~16,000 unknown
//! comprehension-required attributes, more than 64 attributes, an
//! oversized signed request. Each gets a small answer (never the 32 KB 420
//! that listing every unknown attribute made), the answers to one source
//! stop at the unauthenticated-answer rate, and a client on another source
//! address is served throughout. Sizes and counts are asserted here; what
//! these messages cost in CPU is measured by `ferroturn-bench --tests msgcost`.

mod common;
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{EchoPeer, Server, ServerConfig};
use ferroturn::proto::stun::{
    self as wire, AttrType, MAX_ATTRIBUTES, MAX_SIGNED_LEN, MAX_UNKNOWN_LISTED, Request,
};
use raw::{Link, RawClient};
use stun::attributes::{ATTR_SOFTWARE, ATTR_UNKNOWN_ATTRIBUTES};
use stun::message::{METHOD_ALLOCATE, METHOD_BINDING};

/// The largest STUN message that fits one IPv4 UDP datagram (65,507 bytes
/// of payload), rounded down to a multiple of 4.
const MAX_MESSAGE: usize = 65_504;
/// The server's default `limits.unauthenticated_rate`.
const RATE: f64 = 100.0;

/// A Binding request made of `n` empty attributes of distinct unknown
/// comprehension-required types (0x4000 up), the bytes as sent.
fn unknown_binding(n: usize) -> Vec<u8> {
    let mut p = Request::new(METHOD_BINDING).bytes();
    for i in 0..n {
        p.extend_from_slice(&(0x4000 + i as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    }
    let len = (p.len() - 20) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

/// The 64 KB attack: the most attributes a datagram can carry.
fn max_binding() -> Vec<u8> {
    let p = unknown_binding((MAX_MESSAGE - 20) / 4);
    assert_eq!(p.len(), MAX_MESSAGE);
    p
}

fn socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Send `req` and wait for the answer with its transaction id (3 s at most).
fn ask(s: &UdpSocket, server: SocketAddr, req: &[u8]) -> Vec<u8> {
    s.send_to(req, server).unwrap();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..10 {
        let (n, _) = s.recv_from(&mut buf).expect("an answer");
        if buf[8..20] == req[8..20] {
            return buf[..n].to_vec();
        }
    }
    panic!("no answer with the request's transaction id");
}

fn unknown_listed(answer: &[u8]) -> usize {
    let m = wire::decode(answer).expect("a STUN answer");
    wire::attr(&m, ATTR_UNKNOWN_ATTRIBUTES).map_or(0, |v| v.len() / 2)
}

#[test]
fn worst_messages_get_small_answers() {
    let server = Server::start_with(ServerConfig {
        log_level: "info".into(),
        ..ServerConfig::default()
    });
    let s = socket("127.0.0.1");

    // The attack that worked: 16,371 unknown attributes in 64 KB. Answered
    // with a bare 400, not a 420 listing all of them.
    let attack = max_binding();
    let a = ask(&s, server.addr, &attack);
    assert_eq!(wire::reply_error_code(&a), Some(400));
    assert!(a.len() <= 40, "{} byte answer", a.len());
    assert_eq!(unknown_listed(&a), 0);

    // One past the attribute limit: 400 as well.
    let a = ask(&s, server.addr, &unknown_binding(MAX_ATTRIBUTES + 1));
    assert_eq!(wire::reply_error_code(&a), Some(400));

    // At the limit, every attribute unknown: 420 listing 16 of the 64.
    let a = ask(&s, server.addr, &unknown_binding(MAX_ATTRIBUTES));
    assert_eq!(wire::reply_error_code(&a), Some(420));
    assert_eq!(unknown_listed(&a), MAX_UNKNOWN_LISTED);
    assert!(a.len() <= 20 + 8 + 20 + 4 + 2 * MAX_UNKNOWN_LISTED);

    // The same unknown type 64 times is listed once.
    let mut same = Request::new(METHOD_BINDING);
    for _ in 0..MAX_ATTRIBUTES {
        same = same.attr(AttrType(0x7777), b"");
    }
    let a = ask(&s, server.addr, &same.bytes());
    assert_eq!(wire::reply_error_code(&a), Some(420));
    assert_eq!(unknown_listed(&a), 1);

    // A correctly signed Allocate padded past 4 KB: 400, however valid.
    let mut c = RawClient::udp(server.addr, common::REALM, common::USER, common::PASSWORD);
    let big = || {
        let r = Request::new(METHOD_ALLOCATE).transport(17);
        (0..6).fold(r, |r, _| r.attr(ATTR_SOFTWARE, &[b'x'; 700]))
    };
    assert!(big().bytes().len() > MAX_SIGNED_LEN);
    let m = c.signed(big());
    assert_eq!(wire::error_code(&m), Some(400));
    assert!(m.raw.len() <= 40);
    // The same client, with a request of normal size, is served.
    c.allocate();
}

#[test]
fn hostile_answers_stop_at_the_rate_and_other_sources_are_served() {
    // One worker: its limiter's rate is the server's whatever the limiter's
    // layout (per worker or server-wide).
    let server = Server::start_with(ServerConfig {
        workers: Some(1),
        log_level: "info".into(),
        ..ServerConfig::default()
    });
    let peer = EchoPeer::start();

    // The legitimate client, on 127.0.0.2: a relay and a channel, set up
    // before the flood.
    let mut c = RawClient::udp(server.addr, common::REALM, common::USER, common::PASSWORD);
    c.link = Link::Udp(socket("127.0.0.2"));
    c.allocate();
    c.channel_bind(0x4000, peer.addr);
    let stun = socket("127.0.0.2");

    // The attacker on 127.0.0.1: eight source ports, four kinds of message
    // that all need an unauthenticated answer.
    let hostile: Vec<UdpSocket> = (0..8).map(|_| socket("127.0.0.1")).collect();
    let kinds = [
        max_binding(),
        unknown_binding(MAX_ATTRIBUTES + 1),
        unknown_binding(MAX_ATTRIBUTES),
        Request::new(METHOD_ALLOCATE).transport(17).bytes(),
    ];
    const ROUNDS: usize = 100;
    let start = Instant::now();
    let mut sent = 0;
    let (mut relayed, mut bound) = (0, 0);
    let mut buf = vec![0u8; 70_000];
    for round in 0..ROUNDS {
        for (i, s) in hostile.iter().enumerate() {
            let _ = s.send_to(&kinds[(round + i) % kinds.len()], server.addr);
            sent += 1;
        }
        // Meanwhile the other source relays and asks for its address.
        if round % 5 == 0 {
            let frame = c.channel_data(0x4000, &(round as u32).to_be_bytes());
            c.send(&frame);
            let n = c.recv(&mut buf);
            relayed += usize::from(buf[..n] == frame[..]);
            let a = ask(&stun, server.addr, &Request::new(METHOD_BINDING).bytes());
            bound += usize::from(wire::reply_error_code(&a).is_none());
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "flood took too long"
        );
    }
    // Every answer the attacker got, and how large.
    std::thread::sleep(Duration::from_millis(300));
    let elapsed = start.elapsed().as_secs_f64();
    let (mut answers, mut largest) = (0usize, 0usize);
    for s in &hostile {
        s.set_nonblocking(true).unwrap();
        for _ in 0..sent {
            let Ok((n, _)) = s.recv_from(&mut buf) else {
                break;
            };
            answers += 1;
            largest = largest.max(n);
            let code = wire::reply_error_code(&buf[..n]);
            assert!(matches!(code, Some(400 | 401 | 420)), "answer {code:?}");
        }
    }
    println!(
        "{sent} hostile requests in {elapsed:.2} s: {answers} answers, largest {largest} bytes; \
         the other source: {relayed}/{} relayed, {bound}/{} Bindings answered",
        ROUNDS / 5,
        ROUNDS / 5
    );
    assert!(answers > 0, "the first requests are answered");
    // The rate, plus a burst of one second's worth.
    let bound_answers = (RATE * (elapsed + 1.0)) as usize;
    assert!(
        answers <= bound_answers,
        "{answers} answers in {elapsed:.2} s, more than {bound_answers}"
    );
    assert!(answers < sent / 2, "{answers} answers to {sent} requests");
    assert!(largest <= 200, "an answer of {largest} bytes");
    assert_eq!(relayed, ROUNDS / 5, "the other source's relay lost packets");
    assert_eq!(
        bound,
        ROUNDS / 5,
        "the other source's Bindings went unanswered"
    );
}
