//! `--tests msgcost`: the server CPU time of the most expensive STUN
//! messages a client can construct, next to a plain Binding. Each message
//! is sent as a real UDP datagram to a running ferroturn whose
//! unauthenticated-answer limit is off (so that every message is fully
//! processed and answered), for a fixed wall time; the cost is the
//! server's utime+stime (/proc/PID/stat) over that time divided by the
//! messages sent. Kernel time (receiving a 64 KB datagram, sending the
//! answer) counts: it is part of what a message costs the host.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ferroturn::proto::integrity::{ALGORITHM_SHA256, Key, Mac, Signer};
use ferroturn::proto::stun::{
    self as wire, AttrType, MAX_ATTRIBUTES, MAX_SIGNED_LEN, Request, User,
};
use stun::attributes::*;
use stun::message::{METHOD_ALLOCATE, METHOD_BINDING, METHOD_CONNECT};

use crate::net;
use crate::servers::Server;
use crate::turn;

/// The largest STUN message in one IPv4 UDP datagram (65,507 bytes of
/// payload, rounded down to a multiple of 4).
const MAX_MESSAGE: usize = 65_504;
/// The bound the README states: no message above this many µs.
pub const TARGET_US: f64 = 50.0;

/// One measured message.
pub struct Row {
    pub name: &'static str,
    pub bytes: usize,
    /// The answer's error code ("ok" for a success, "-" for none).
    pub answer: String,
    pub answer_bytes: usize,
    pub sent: u64,
    pub answered: u64,
    pub us: f64,
}

/// A request of `method` whose body is `attrs` (type, value) in order; the
/// header's length is set to the body's.
fn raw_request(method: stun::message::Method, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut p = Request::new(method).bytes();
    for (t, v) in attrs {
        p.extend_from_slice(&t.to_be_bytes());
        p.extend_from_slice(&(v.len() as u16).to_be_bytes());
        p.extend_from_slice(v);
        while p.len() % 4 != 0 {
            p.push(0);
        }
    }
    let len = (p.len() - 20) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

/// `n` attributes of distinct unknown comprehension-required types.
fn unknown(n: usize, len: usize) -> Vec<(u16, Vec<u8>)> {
    (0..n)
        .map(|i| (0x4000 + i as u16, vec![0x55; len]))
        .collect()
}

/// The messages, built for a client that holds `nonce` (fresh, for its
/// source address). Signed ones use the benchmark's user with a wrong
/// password: the server computes the HMAC and answers 401, and no
/// allocation is made however many are sent.
fn messages(nonce: &str) -> Vec<(&'static str, Vec<u8>)> {
    let wrong = Signer {
        key: Key::md5(turn::USER, turn::REALM, "wrong"),
        mac: Mac::Sha1,
    };
    let wrong256 = Signer {
        key: Key::sha256(turn::USER, turn::REALM, "wrong"),
        mac: Mac::Sha256,
    };
    let signed = |r: Request| r.sign_with(User::Name(turn::USER), turn::REALM, nonce, None, &wrong);
    // Pad with SOFTWARE (comprehension-optional, ignored) to `total` bytes
    // once signed: a signature adds USERNAME, REALM, NONCE and 24 bytes.
    let padded_for = |user: &str, total: usize| {
        let sig = 12
            + user.len().next_multiple_of(4)
            + turn::REALM.len().next_multiple_of(4)
            + nonce.len().next_multiple_of(4)
            + 24;
        let mut r = Request::new(METHOD_ALLOCATE).transport(17);
        let mut left = total - 20 - 8 - sig;
        while left >= 4 {
            let n = (left - 4).min(4000) & !3;
            r = r.attr(ATTR_SOFTWARE, &vec![b's'; n]);
            left -= 4 + n;
        }
        r
    };
    let padded = |total: usize| padded_for(turn::USER, total);
    let rest_user = format!("4000000000:{}", turn::USER);
    let max_optional: Vec<(u16, Vec<u8>)> = (0..MAX_ATTRIBUTES - 1)
        .map(|_| {
            (
                0x8022u16,
                vec![b's'; ((MAX_MESSAGE - 20 - 8) / (MAX_ATTRIBUTES - 1) - 4) & !3],
            )
        })
        .collect();
    let mut max_fp = Request::new(METHOD_BINDING);
    for (t, v) in &max_optional {
        max_fp = max_fp.attr(AttrType(*t), v);
    }
    let max_fp = max_fp.fingerprinted();

    // Duplicated integrity attributes: a signed request, then MESSAGE-
    // INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT-like repeats up
    // to the attribute limit.
    let mut dup = signed(Request::new(METHOD_ALLOCATE).transport(17));
    let have = wire::count_attributes(&dup[20..]).unwrap_or(0);
    for i in 0..MAX_ATTRIBUTES - have {
        let (t, n) = if i % 2 == 0 {
            (0x0008u16, 20)
        } else {
            (0x001Cu16, 32)
        };
        dup.extend_from_slice(&t.to_be_bytes());
        dup.extend_from_slice(&(n as u16).to_be_bytes());
        dup.extend_from_slice(&vec![0xAA; n]);
    }
    let len = (dup.len() - 20) as u16;
    dup[2..4].copy_from_slice(&len.to_be_bytes());

    let long = "x".repeat(760);
    let long_user = format!("4000000000:{}", &long[..740]);
    let long_names = Request::new(METHOD_ALLOCATE).transport(17).sign_with(
        User::Name(&long_user),
        &long,
        nonce,
        None,
        &wrong,
    );
    // PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM (20 bytes) and the longer
    // tag (12 more) come on top of the padding.
    let sha256 = padded(MAX_SIGNED_LEN - 32).sign_with(
        User::Name(turn::USER),
        turn::REALM,
        nonce,
        Some(ALGORITHM_SHA256),
        &wrong256,
    );
    let mut truncated = raw_request(METHOD_BINDING, &unknown(MAX_ATTRIBUTES, 1000));
    let n = truncated.len();
    truncated[n - 1002] = 0xFF; // the last attribute now runs past the end

    vec![
        ("plain Binding", Request::new(METHOD_BINDING).bytes()),
        (
            "Binding with FINGERPRINT",
            Request::new(METHOD_BINDING).fingerprinted(),
        ),
        (
            "64 KB Binding, 16,371 unknown attributes",
            raw_request(METHOD_BINDING, &unknown((MAX_MESSAGE - 20) / 4, 0)),
        ),
        (
            "64 KB, 65 attributes (one over)",
            raw_request(METHOD_BINDING, &unknown(MAX_ATTRIBUTES + 1, 1000)),
        ),
        (
            "64 attributes, every one unknown",
            raw_request(METHOD_BINDING, &unknown(MAX_ATTRIBUTES, 0)),
        ),
        (
            "64 KB, 64 attributes, every one unknown",
            raw_request(METHOD_BINDING, &unknown(MAX_ATTRIBUTES, 1016)),
        ),
        ("64 KB Binding, 64 attributes, FINGERPRINT", max_fp),
        ("64 KB Binding, last attribute truncated", truncated),
        (
            "Connect (unsupported method), 64 KB",
            raw_request(METHOD_CONNECT, &unknown(MAX_ATTRIBUTES, 1016)),
        ),
        (
            "unsigned Allocate (401)",
            Request::new(METHOD_ALLOCATE).transport(17).bytes(),
        ),
        (
            "signed, 4 KB, fresh nonce, HMAC-SHA1",
            signed(padded(MAX_SIGNED_LEN)),
        ),
        ("signed, 4 KB, fresh nonce, HMAC-SHA256", sha256),
        ("signed, 64 KB (400, no HMAC)", signed(padded(MAX_MESSAGE))),
        ("signed, 64 attributes, duplicated integrity", dup),
        ("signed, 760-byte USERNAME, REALM", long_names),
        (
            "signed, 4 KB, REST name, 2 secrets (2 HMACs)",
            padded_for(&rest_user, MAX_SIGNED_LEN).sign_with(
                User::Name(&rest_user),
                turn::REALM,
                nonce,
                None,
                &wrong,
            ),
        ),
    ]
}

/// Learn a fresh nonce for `sock`'s address (401 to an unsigned Allocate).
fn nonce(sock: &UdpSocket, server: SocketAddrV4) -> Option<String> {
    let req = Request::new(METHOD_ALLOCATE).transport(17).bytes();
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        sock.send_to(&req, server).ok()?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(m) = wire::decode(&buf[..n]) {
                return wire::text(&m, ATTR_NONCE);
            }
        }
    }
    None
}

/// Measure every message for `each` of wall time against `server`.
pub fn run(server: &Server, each: Duration) -> Vec<Row> {
    let sock = net::udp(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        8 << 20,
        Some(Duration::from_millis(200)),
    )
    .expect("msgcost socket");
    let Some(nonce) = nonce(&sock, server.addr) else {
        eprintln!("  msgcost: no nonce from the server");
        return Vec::new();
    };
    let probe = Request::new(METHOD_BINDING).bytes();
    let mut buf = vec![0u8; 70_000];
    let mut rows: Vec<Row> = Vec::new();
    for (name, msg) in messages(&nonce) {
        // A window of messages, then a plain Binding whose answer says the
        // server has read them all (one socket: in order).
        let window = (256 * 1024 / msg.len()).clamp(1, 64);
        let (mut sent, mut answered, mut probes) = (0u64, 0u64, 0u64);
        let (mut answer, mut answer_bytes) = ("-".to_string(), 0);
        let cpu0 = server.cpu();
        let t0 = Instant::now();
        while t0.elapsed() < each {
            for _ in 0..window {
                let _ = sock.send_to(&msg, server.addr);
                sent += 1;
            }
            let _ = sock.send_to(&probe, server.addr);
            probes += 1;
            // Read until the probe's answer (or a timeout: then go on).
            for _ in 0..window + 1 {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    break;
                };
                if buf[8..20] == probe[8..20] {
                    break;
                }
                answered += 1;
                answer_bytes = n;
                answer = wire::reply_error_code(&buf[..n]).map_or("ok".into(), |c| c.to_string());
            }
        }
        let cpu = server.cpu() - cpu0;
        // The probes cost what a plain Binding costs; take them out.
        // The first message is itself a plain Binding: count the probes in.
        let us = match rows.first() {
            None => cpu / (sent + probes) as f64 * 1e6,
            Some(plain) => (cpu - plain.us * 1e-6 * probes as f64).max(0.0) / sent as f64 * 1e6,
        };
        eprintln!(
            "  msgcost {name}: {} bytes → {answer} ({answer_bytes} bytes), {answered}/{sent} answered, {us:.1} µs",
            msg.len()
        );
        rows.push(Row {
            name,
            bytes: msg.len(),
            answer,
            answer_bytes,
            sent,
            answered,
            us,
        });
    }
    rows
}

/// The table for the report.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Message cost (server CPU per message, unauthenticated limit off; target ≤ {TARGET_US:.0} µs)\n"
    );
    let _ = writeln!(
        s,
        "| message | bytes | answer | answer bytes | sent | answered | µs/message |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1}{} |",
            r.name,
            r.bytes,
            r.answer,
            r.answer_bytes,
            r.sent,
            r.answered,
            r.us,
            if r.us > TARGET_US { " ✗" } else { "" }
        );
    }
    s
}
