//! Batched datagram I/O: `recvmmsg` fills up to [`SLOTS`] datagrams in one
//! system call, `sendmmsg` sends a run of datagrams from one socket in one.
//! Buffers, headers and addresses live in a [`Batch`] made once per
//! worker: nothing here allocates.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use crate::proto::channel_data::{BUF_LEN, HEADROOM, MAX_PAYLOAD};

/// Datagrams per `recvmmsg`.
pub const SLOTS: usize = 32;

/// Receive buffers: slot `i` is `data[i * BUF_LEN..(i + 1) * BUF_LEN]`,
/// its datagram at [`HEADROOM`], so that framing can be written in place.
pub struct Batch {
    pub data: Box<[u8]>,
    /// Slots `0..used` hold datagrams that may still be queued to go out;
    /// the next [`recv`] fills from here.
    pub used: usize,
    pub len: [usize; SLOTS],
    pub from: [SocketAddr; SLOTS],
    /// Message headers for `recvmmsg` and `sendmmsg`, zeroed once; each call
    /// sets only the fields it uses.
    headers: Box<Headers>,
}

struct Headers {
    names: [libc::sockaddr_storage; SLOTS],
    iovs: [libc::iovec; SLOTS],
    hdrs: [libc::mmsghdr; SLOTS],
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            data: vec![0u8; SLOTS * BUF_LEN].into_boxed_slice(),
            used: 0,
            len: [0; SLOTS],
            from: [SocketAddr::from(([0, 0, 0, 0], 0)); SLOTS],
            // All-zero is a valid value of each of these C structs.
            headers: Box::new(unsafe { zeroed() }),
        }
    }

    /// Send `outs` from this batch's buffers (see [`send`]).
    pub fn send(&mut self, outs: &mut [Out]) -> usize {
        send(&self.data, &mut self.headers, outs)
    }

    /// Hand the buffers' memory back to the system (their contents are
    /// lost; the pages come back, zeroed, when the next datagram lands).
    /// For a shard that has gone idle: 32 slots of 64 KiB each keep the
    /// pages their datagrams touched.
    pub fn release(&mut self) {
        const PAGE: usize = 4096;
        let start = self.data.as_mut_ptr() as usize;
        let end = start + self.data.len();
        let (lo, hi) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `data`, which we own mutably;
            // MADV_DONTNEED on private anonymous memory only zeroes it.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED);
            }
        }
        self.used = 0;
    }

    /// Offset of slot `i` in `data`.
    #[inline]
    pub fn base(i: usize) -> usize {
        i * BUF_LEN
    }
}

// SAFETY: the raw pointers in `headers` are scratch space: every call
// rewrites those it uses (to this batch's own buffers, or to the data it
// is given) before the system call, and nothing reads them afterwards. So a
// batch can move to another thread with the shard that owns it.
unsafe impl Send for Batch {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// Receive datagrams from `fd` (non-blocking) into the free slots
/// `b.used..SLOTS`, and mark them used; how many came.
pub fn recv(fd: RawFd, b: &mut Batch) -> io::Result<usize> {
    let at = b.used;
    let Headers { names, iovs, hdrs } = &mut *b.headers;
    let base = b.data.as_mut_ptr();
    for i in at..SLOTS {
        iovs[i] = libc::iovec {
            iov_base: unsafe { base.add(Batch::base(i) + HEADROOM) } as *mut libc::c_void,
            iov_len: MAX_PAYLOAD,
        };
        hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs[at..].as_mut_ptr(),
            (SLOTS - at) as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in at..at + n {
        b.len[i] = hdrs[i].msg_len as usize;
        b.from[i] = from_sockaddr(&names[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    }
    b.used = at + n;
    Ok(n)
}

/// A datagram to send: `data[start..end]` of a batch, from socket `fd`.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub fd: RawFd,
    pub start: usize,
    pub end: usize,
    pub to: SocketAddr,
}

/// Send every datagram in `outs` (bytes from `data`), one `sendmmsg` per run
/// of datagrams from the same socket. Datagrams of one socket keep their
/// order. Returns how many a full socket buffer refused (one the kernel
/// refuses for another reason is skipped, and not counted).
fn send(data: &[u8], h: &mut Headers, outs: &mut [Out]) -> usize {
    // Group by socket; the index keeps each socket's order (and the sort
    // unstable, which does not allocate).
    if outs.len() > 1 {
        outs.sort_unstable_by_key(|o| (o.fd, o.start));
    }
    let mut dropped = 0;
    let mut i = 0;
    while i < outs.len() {
        let fd = outs[i].fd;
        let mut j = i;
        while j < outs.len() && outs[j].fd == fd && j - i < SLOTS {
            j += 1;
        }
        dropped += send_run(fd, data, h, &outs[i..j]);
        i = j;
    }
    dropped
}

fn send_run(fd: RawFd, data: &[u8], h: &mut Headers, outs: &[Out]) -> usize {
    let n = outs.len();
    let Headers { names, iovs, hdrs } = h;
    for (k, o) in outs.iter().enumerate() {
        let len = to_sockaddr(o.to, &mut names[k]);
        iovs[k] = libc::iovec {
            iov_base: data[o.start..o.end].as_ptr() as *mut libc::c_void,
            iov_len: o.end - o.start,
        };
        hdrs[k].msg_hdr.msg_name = &mut names[k] as *mut _ as *mut libc::c_void;
        hdrs[k].msg_hdr.msg_namelen = len;
        hdrs[k].msg_hdr.msg_iov = &mut iovs[k];
        hdrs[k].msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    // A datagram the kernel refuses (one bad destination) must not stop
    // the rest: skip it and go on.
    while sent < n {
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[sent..].as_mut_ptr(),
                (n - sent) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return n - sent;
        }
        if e.kind() != io::ErrorKind::Interrupted {
            sent += 1;
        }
    }
    0
}

fn to_sockaddr(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // The slot may hold a longer address from an earlier call.
    *s = unsafe { zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = s as *mut _ as *mut libc::sockaddr_in;
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                };
            }
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = s as *mut _ as *mut libc::sockaddr_in6;
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                (*sin6).sin6_flowinfo = v6.flowinfo();
                (*sin6).sin6_scope_id = v6.scope_id();
            }
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batches_round_trip_v4_and_v6() {
        for (a, b) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let rx = std::net::UdpSocket::bind(a).unwrap();
            let tx = std::net::UdpSocket::bind(b).unwrap();
            let to = rx.local_addr().unwrap();
            let mut data = vec![0u8; 64];
            for (i, d) in data.iter_mut().enumerate() {
                *d = i as u8;
            }
            let mut outs: Vec<Out> = (0..5)
                .map(|i| Out {
                    fd: tx.as_raw_fd(),
                    start: i * 10,
                    end: i * 10 + 3 + i,
                    to,
                })
                .collect();
            let mut h: Box<Headers> = Box::new(unsafe { zeroed() });
            assert_eq!(send(&data, &mut h, &mut outs), 0);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut batch = Batch::new();
            let n = recv(rx.as_raw_fd(), &mut batch).unwrap();
            assert_eq!(n, 5);
            for i in 0..5 {
                assert_eq!(batch.from[i], tx.local_addr().unwrap());
                let got = &batch.data
                    [Batch::base(i) + HEADROOM..Batch::base(i) + HEADROOM + batch.len[i]];
                assert_eq!(got, &data[i * 10..i * 10 + 3 + i], "datagram {i} in order");
            }
            let e = recv(rx.as_raw_fd(), &mut batch).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            // The next read fills the slots after the used ones.
            assert_eq!(send(&data, &mut h, &mut outs[..2]), 0);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(recv(rx.as_raw_fd(), &mut batch).unwrap(), 2);
            assert_eq!(batch.used, 7);
            for (slot, i) in [(5, 0), (6, 1)] {
                let at = Batch::base(slot) + HEADROOM;
                let got = &batch.data[at..at + batch.len[slot]];
                assert_eq!(got, &data[i * 10..i * 10 + 3 + i], "slot {slot}");
            }
            // Released buffers read back as zeroes (all whole pages of
            // them: slot 1 lies inside) and take datagrams again.
            batch.release();
            assert_eq!(batch.used, 0);
            let at = Batch::base(1) + HEADROOM;
            assert!(batch.data[at..at + 8].iter().all(|&b| b == 0));
            assert_eq!(send(&data, &mut h, &mut outs[..1]), 0);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(recv(rx.as_raw_fd(), &mut batch).unwrap(), 1);
            assert_eq!(&batch.data[HEADROOM..HEADROOM + 3], &data[..3]);
        }
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_the_rest_go_out() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let data = [7u8; 16];
        let mut h: Box<Headers> = Box::new(unsafe { zeroed() });
        let out = |to, start| Out {
            fd: tx.as_raw_fd(),
            start,
            end: start + 4,
            to,
        };
        let mut outs = [out(to, 0), out(bad, 4), out(to, 8)];
        // Relayed data refused so is not a drop (its HELP: a full buffer).
        assert_eq!(send(&data, &mut h, &mut outs), 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = Batch::new();
        assert_eq!(recv(rx.as_raw_fd(), &mut batch).unwrap(), 2);
    }
}
