//! TURN clients for the control plane: many clients, each from its own
//! 127.x.y.z source address, driven concurrently over one socket.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ferroturn::proto::stun::{Request, decode, error_code, text};
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_REFRESH,
};

use crate::net::{self, Out, Recv};

pub const USER: &str = "bench";
pub const PASS: &str = "bench";
pub const REALM: &str = "bench";

/// What each client does.
#[derive(Clone, Copy)]
pub enum Plan {
    /// Allocate → 401, Allocate, Refresh 0.
    Cycle,
    /// Allocate → 401, Allocate, then ChannelBind if the client has a channel.
    Hold,
    /// Refresh 0 with the nonce the client already has.
    Delete,
}

pub struct Client {
    pub src: Ipv4Addr,
    pub nonce: String,
    pub realm: String,
    /// Channel number and peer for `Plan::Hold`.
    pub bind: Option<(u16, SocketAddrV4)>,
    step: u8,
    last: Vec<u8>,
    sent: Instant,
    tries: u8,
}

impl Client {
    pub fn new(src: Ipv4Addr, bind: Option<(u16, SocketAddrV4)>) -> Self {
        Client {
            src,
            nonce: String::new(),
            realm: REALM.into(),
            bind,
            step: 0,
            last: Vec::new(),
            sent: Instant::now(),
            tries: 0,
        }
    }

    /// The same client, ready to run another plan from its first step
    /// (a held allocation about to be deleted).
    pub fn restart(mut self) -> Self {
        self.step = 0;
        self.tries = 0;
        self
    }

    /// The request for the current step, or None when done.
    fn request(&self, plan: Plan) -> Option<Vec<u8>> {
        let signed = |r: Request| r.sign(USER, &self.realm, PASS, &self.nonce);
        match (plan, self.step) {
            (Plan::Delete, 0) => Some(signed(Request::new(METHOD_REFRESH).lifetime(0))),
            (Plan::Delete, _) => None,
            (_, 0) => Some(Request::new(METHOD_ALLOCATE).transport(17).bytes()),
            (_, 1) => Some(signed(Request::new(METHOD_ALLOCATE).transport(17))),
            (Plan::Cycle, 2) => Some(signed(Request::new(METHOD_REFRESH).lifetime(0))),
            (Plan::Hold, 2) => self.bind.map(|(ch, peer)| {
                signed(
                    Request::new(METHOD_CHANNEL_BIND)
                        .channel(ch)
                        .peer(std::net::SocketAddr::V4(peer)),
                )
            }),
            _ => None,
        }
    }
}

#[derive(Default, Debug, Clone)]
pub struct DriveStats {
    pub done: usize,
    pub failed: usize,
    pub secs: f64,
    /// Why clients failed: an error code, or 0 for no answer.
    pub why: std::collections::BTreeMap<u16, usize>,
}

impl DriveStats {
    /// "" or " (437: 3, timeout: 2)".
    pub fn why(&self) -> String {
        if self.why.is_empty() {
            return String::new();
        }
        let v: Vec<String> = self
            .why
            .iter()
            .map(|(c, n)| {
                if *c == 0 {
                    format!("timeout: {n}")
                } else {
                    format!("{c}: {n}")
                }
            })
            .collect();
        format!(" ({})", v.join(", "))
    }
}

/// Send `c`'s next request `req` and wait for its answer.
fn launch(
    mut c: Client,
    req: Vec<u8>,
    now: Instant,
    sendq: &mut Vec<(Ipv4Addr, Vec<u8>)>,
    live: &mut HashMap<[u8; 12], Client>,
) {
    c.last = req.clone();
    c.sent = now;
    c.tries = 1;
    sendq.push((c.src, req));
    live.insert(c.last[8..20].try_into().expect("a transaction id"), c);
}

/// Hold `count` allocations: client `i` is `make(i)`, at most `window` in
/// flight, for at most `limit`. The clients that got there are returned.
pub fn hold(
    sock: &UdpSocket,
    server: SocketAddrV4,
    count: usize,
    window: usize,
    limit: Duration,
    mut make: impl FnMut(usize) -> Client,
) -> (DriveStats, Vec<Client>) {
    let mut held = Vec::with_capacity(count);
    let mut i = 0;
    let st = drive(
        sock,
        server,
        Plan::Hold,
        window,
        Instant::now() + limit,
        || {
            (i < count).then(|| {
                i += 1;
                make(i - 1)
            })
        },
        Some(&mut held),
    );
    (st, held)
}

/// Drive clients from `next` (called until it returns None or `deadline`),
/// at most `window` in flight; finished clients go to `out` when given.
/// Every request is retransmitted after 300 ms, at most 3 times.
pub fn drive(
    sock: &UdpSocket,
    server: SocketAddrV4,
    plan: Plan,
    window: usize,
    deadline: Instant,
    mut next: impl FnMut() -> Option<Client>,
    mut out: Option<&mut Vec<Client>>,
) -> DriveStats {
    let fd = sock.as_raw_fd();
    let start = Instant::now();
    let mut live: HashMap<[u8; 12], Client> = HashMap::new();
    let mut exhausted = false;
    let mut st = DriveStats::default();
    let mut rx = Recv::new(net::BATCH);
    let mut sendq: Vec<(Ipv4Addr, Vec<u8>)> = Vec::new();
    let mut last_scan = Instant::now();
    loop {
        let now = Instant::now();
        // Start new clients.
        while !exhausted && live.len() < window && now < deadline {
            match next() {
                Some(c) => match c.request(plan) {
                    Some(req) => launch(c, req, now, &mut sendq, &mut live),
                    None => st.done += 1,
                },
                None => exhausted = true,
            }
        }
        if !sendq.is_empty() {
            let outs: Vec<Out> = sendq
                .iter()
                .map(|(src, d)| Out {
                    src: Some(*src),
                    dst: server,
                    data: d,
                })
                .collect();
            net::send_batch(fd, &outs);
            sendq.clear();
        }
        if live.is_empty() && (exhausted || now >= deadline) {
            break;
        }
        if now >= deadline + Duration::from_secs(2) {
            st.failed += live.len();
            *st.why.entry(0).or_default() += live.len();
            break;
        }
        // Receive answers (the socket has a short read timeout).
        let n = rx.recv(fd, 0, net::BATCH, 0, libc::MSG_WAITFORONE);
        let now = Instant::now();
        for i in 0..n {
            let pkt = &rx.bufs[i][..rx.lens[i]];
            let Some(m) = decode(pkt) else { continue };
            let Some(mut c) = live.remove(&m.transaction_id.0) else {
                continue;
            };
            let ok = m.typ.class == CLASS_SUCCESS_RESPONSE;
            let code = if m.typ.class == CLASS_ERROR_RESPONSE {
                error_code(&m)
            } else {
                None
            };
            let mut advance = false;
            match (c.step, plan, ok, code) {
                // The challenge: learn the nonce and realm.
                (0, Plan::Cycle | Plan::Hold, _, Some(401)) => {
                    c.nonce = text(&m, ATTR_NONCE).unwrap_or_default();
                    if let Some(r) = text(&m, ATTR_REALM) {
                        c.realm = r;
                    }
                    advance = true;
                }
                (_, _, true, _) => advance = true,
                // A stale nonce: take the new one and repeat the step.
                (_, _, _, Some(438)) => {
                    c.nonce = text(&m, ATTR_NONCE).unwrap_or_default();
                }
                _ => {
                    st.failed += 1;
                    *st.why.entry(code.unwrap_or(1)).or_default() += 1;
                    continue;
                }
            }
            if advance {
                c.step += 1;
            }
            match c.request(plan) {
                Some(req) => launch(c, req, now, &mut sendq, &mut live),
                None => {
                    st.done += 1;
                    if let Some(o) = out.as_deref_mut() {
                        o.push(c);
                    }
                }
            }
        }
        // Retransmissions.
        if now.duration_since(last_scan) > Duration::from_millis(50) {
            last_scan = now;
            let mut dead = Vec::new();
            for (k, c) in live.iter_mut() {
                if now.duration_since(c.sent) > Duration::from_millis(300) {
                    if c.tries >= 4 {
                        dead.push(*k);
                    } else {
                        c.tries += 1;
                        c.sent = now;
                        sendq.push((c.src, c.last.clone()));
                    }
                }
            }
            for k in dead {
                live.remove(&k);
                st.failed += 1;
                *st.why.entry(0).or_default() += 1;
            }
        }
    }
    st.secs = start.elapsed().as_secs_f64();
    st
}

/// Wait until `server` answers a Binding request (at most `max`).
pub fn wait_ready(server: SocketAddrV4, max: Duration) -> bool {
    // Any address: the route to `server` picks the source (127.0.0.1 on
    // loopback, the client namespace's own in the veth topology).
    let Ok(s) = net::udp(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        1 << 16,
        Some(Duration::from_millis(50)),
    ) else {
        return false;
    };
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < max {
        let req = Request::new(METHOD_BINDING).bytes();
        let _ = s.send_to(&req, server);
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && decode(&buf[..n]).is_some_and(|m| m.transaction_id.0 == req[8..20])
        {
            return true;
        }
    }
    false
}
