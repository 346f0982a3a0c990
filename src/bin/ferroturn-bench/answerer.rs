//! The zero-work answerer: the floor of the control-plane test on this
//! machine.
//!
//! It answers the bench's allocation cycle (Allocate → 401, Allocate,
//! Refresh 0) and Binding with fixed answers: no state, no MESSAGE-INTEGRITY
//! check or signature, no nonce, no relay socket, no log. `answerer` waits
//! for requests the way ferroturn's UDP shards do once load has given each
//! a thread of its own (`udp_threads = "adaptive"` merges them at low
//! load): one thread per core on its own SO_REUSEPORT socket under
//! SCHED_BATCH, `epoll_wait`, then `recvmmsg` until the socket is empty,
//! one `sendto` per answer. What a real server adds can only cost
//! more CPU; what it cannot beat is the time its threads take to wake up.
//!
//! `answerer-poll` is one thread that, after its last datagram, polls its
//! socket with `MSG_DONTWAIT` for [`POLL`] before it sleeps in
//! `epoll_wait`; `answerer-spin` is one thread that never sleeps. One
//! thread only, so that the bench's client keeps the other core of a
//! 2-core host. The gap between them and `answerer`, with 8 cycles in
//! flight, is what sleeping and waking cost on this host.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use crate::net::{self, Recv};

const SOCK_BUF: usize = 4 << 20;
/// The answerer exits on its own after this long, whatever happens.
const MAX_LIFE: Duration = Duration::from_secs(3600);
const MAGIC: u32 = 0x2112_A442;
/// How long `answerer-poll` polls after its last datagram before sleeping.
pub const POLL: Duration = Duration::from_micros(50);

/// How an answerer thread waits for the next request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// In `epoll_wait`, under SCHED_BATCH (`answerer`).
    Sleep,
    /// Polling for [`POLL`] after the last datagram, then in `epoll_wait`
    /// (`answerer-poll`).
    Poll,
    /// Polling, never sleeping (`answerer-spin`).
    Spin,
}

impl Wait {
    /// The argument after LISTEN THREADS that selects it.
    pub fn parse(arg: Option<&str>) -> Wait {
        match arg {
            Some("poll") => Wait::Poll,
            Some("spin") => Wait::Spin,
            _ => Wait::Sleep,
        }
    }
}

const BINDING: u16 = 0x0001;
const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const LIFETIME: u16 = 0x000D;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Run `threads` answering threads on `listen` until killed (the bench
/// ends it with itself) or MAX_LIFE, each waiting as `wait` says.
pub fn run(listen: SocketAddrV4, threads: usize, wait: Wait) -> std::io::Result<()> {
    let socks: Vec<UdpSocket> = (0..threads.max(1))
        .map(|_| reuseport(listen))
        .collect::<Result<_, _>>()?;
    let handles: Vec<_> = socks
        .into_iter()
        .map(|s| std::thread::spawn(move || serve(&s, wait)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A non-blocking UDP socket on `addr` with SO_REUSEPORT, so each thread
/// has its own and the kernel spreads clients over them by address.
fn reuseport(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Owned from here: closed on every early return.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let sa = net::to_sa(addr);
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    net::set_buffers(fd, SOCK_BUF);
    Ok(sock)
}

fn serve(sock: &UdpSocket, wait: Wait) {
    if wait == Wait::Sleep {
        // As ferroturn's UDP threads start under `udp_scheduling = "auto"`
        // (and stay on a quiet host): a woken thread does not preempt the
        // task on its CPU (sched(7)).
        let p = libc::sched_param { sched_priority: 0 };
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &p) };
    }
    let fd = sock.as_raw_fd();
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return;
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    let mut rx = Recv::new(net::BATCH);
    let mut out = [0u8; 256];
    let born = Instant::now();
    // When the last datagram came (`Wait::Poll`).
    let mut last = born;
    while born.elapsed() < MAX_LIFE {
        let sleep = match wait {
            Wait::Sleep => true,
            Wait::Poll => last.elapsed() >= POLL,
            Wait::Spin => false,
        };
        if sleep {
            let mut e: [libc::epoll_event; 1] = unsafe { std::mem::zeroed() };
            unsafe { libc::epoll_wait(ep, e.as_mut_ptr(), 1, 1000) };
        }
        // Until the socket is empty, as a shard reads it (bounded: the
        // next epoll_wait takes over).
        for _ in 0..64 {
            let got = rx.recv(fd, 0, net::BATCH, 0, libc::MSG_DONTWAIT);
            if got > 0 {
                last = Instant::now();
            }
            for k in 0..got {
                let n = answer(&rx.bufs[k][..rx.lens[k]], rx.from[k], &mut out);
                if n > 0 {
                    let sa = net::to_sa(rx.from[k]);
                    unsafe {
                        libc::sendto(
                            fd,
                            out.as_ptr() as *const libc::c_void,
                            n,
                            0,
                            &sa as *const _ as *const libc::sockaddr,
                            size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                }
            }
            if got < net::BATCH {
                break;
            }
        }
    }
    unsafe { libc::close(ep) };
}

/// Append attribute `typ` with `value` at `at`, padded to 4 bytes; the
/// new end.
fn put(out: &mut [u8], at: usize, typ: u16, value: &[u8]) -> usize {
    out[at..at + 2].copy_from_slice(&typ.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_be_bytes());
    out[at + 4..at + 4 + value.len()].copy_from_slice(value);
    let end = at + 4 + value.len();
    let padded = end.next_multiple_of(4);
    out[end..padded].fill(0);
    padded
}

/// The fixed answer to request `req` from `from`, written to `out`; its
/// length, or 0 for anything the cycle does not send.
fn answer(req: &[u8], from: SocketAddrV4, out: &mut [u8; 256]) -> usize {
    if req.len() < 20 || req[0] & 0xC0 != 0 || req[4..8] != MAGIC.to_be_bytes() {
        return 0;
    }
    let typ = u16::from_be_bytes([req[0], req[1]]);
    // Whether the request is signed (the second Allocate of a cycle).
    let mut signed = false;
    let mut at = 20;
    while at + 4 <= req.len() {
        let t = u16::from_be_bytes([req[at], req[at + 1]]);
        let l = u16::from_be_bytes([req[at + 2], req[at + 3]]) as usize;
        signed |= t == MESSAGE_INTEGRITY;
        at += 4 + l.next_multiple_of(4);
    }
    let mut xor = [0u8; 8];
    xor[1] = 0x01;
    xor[2..4].copy_from_slice(&(from.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    xor[4..8].copy_from_slice(&(u32::from(*from.ip()) ^ MAGIC).to_be_bytes());
    out[4..20].copy_from_slice(&req[4..20]);
    let (class, end) = match typ {
        BINDING => (SUCCESS, put(out, 20, XOR_MAPPED_ADDRESS, &xor)),
        ALLOCATE if !signed => {
            let mut code = [0u8; 16];
            code[2] = 4;
            code[3] = 1;
            code[4..].copy_from_slice(b"Unauthorized");
            let at = put(out, 20, ERROR_CODE, &code);
            let at = put(out, at, REALM, crate::turn::REALM.as_bytes());
            (
                ERROR,
                put(out, at, NONCE, b"0123456789abcdef0123456789abcdef"),
            )
        }
        ALLOCATE => {
            let at = put(out, 20, XOR_RELAYED_ADDRESS, &xor);
            let at = put(out, at, XOR_MAPPED_ADDRESS, &xor);
            (SUCCESS, put(out, at, LIFETIME, &600u32.to_be_bytes()))
        }
        REFRESH => (SUCCESS, put(out, 20, LIFETIME, &0u32.to_be_bytes())),
        _ => return 0,
    };
    out[0..2].copy_from_slice(&(typ | class).to_be_bytes());
    out[2..4].copy_from_slice(&((end - 20) as u16).to_be_bytes());
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroturn::proto::stun::{Request, decode, error_code, text};
    use std::net::Ipv4Addr;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM};
    use stun::message::{
        CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH,
    };

    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 40000);

    #[test]
    fn an_unsigned_allocate_gets_a_401_with_realm_and_nonce() {
        let req = Request::new(METHOD_ALLOCATE).transport(17).bytes();
        let mut out = [0u8; 256];
        let n = answer(&req, FROM, &mut out);
        let m = decode(&out[..n]).expect("a STUN message");
        assert_eq!(m.transaction_id.0, req[8..20]);
        assert_eq!(error_code(&m), Some(401));
        assert_eq!(text(&m, ATTR_REALM).as_deref(), Some(crate::turn::REALM));
        assert!(text(&m, ATTR_NONCE).is_some());
    }

    #[test]
    fn signed_requests_succeed_and_other_methods_get_nothing() {
        let mut out = [0u8; 256];
        for method in [METHOD_ALLOCATE, METHOD_REFRESH] {
            let req = Request::new(method).sign("u", "r", "p", "n");
            let n = answer(&req, FROM, &mut out);
            let m = decode(&out[..n]).expect("a STUN message");
            assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
            assert_eq!(m.transaction_id.0, req[8..20]);
        }
        let req = Request::new(METHOD_CHANNEL_BIND).bytes();
        assert_eq!(answer(&req, FROM, &mut out), 0);
        assert_eq!(answer(&req[..19], FROM, &mut out), 0);
    }
}
