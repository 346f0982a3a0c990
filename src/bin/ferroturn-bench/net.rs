//! Batched UDP I/O over libc: recvmmsg/sendmmsg, IP_PKTINFO source
//! addresses (one socket speaks for many 127.x.y.z clients), socket options,
//! and the open-files limit.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Messages per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;
/// Room for the largest packet the benchmark sends (1200 B payload + 4).
pub const SLOT: usize = 2048;

pub fn to_sa(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn from_sa(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// A UDP socket on `addr` with big buffers (SO_*BUFFORCE as root, else the
/// capped SO_*BUF), blocking, with an optional receive timeout.
pub fn udp(addr: SocketAddrV4, buf: usize, timeout: Option<Duration>) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    set_buffers(s.as_raw_fd(), buf);
    s.set_read_timeout(timeout)?;
    Ok(s)
}

pub fn set_buffers(fd: RawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        unsafe {
            let p = &v as *const _ as *const libc::c_void;
            let l = size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, l) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, l);
            }
        }
    }
}

/// Raise RLIMIT_NOFILE to its hard limit (inherited by the servers we start).
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut r: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            return r.rlim_cur as u64;
        }
    }
    0
}

/// One datagram to send: from `src` (IP_PKTINFO; `None`: the socket's own
/// address) to `dst`.
pub struct Out<'a> {
    pub src: Option<Ipv4Addr>,
    pub dst: SocketAddrV4,
    pub data: &'a [u8],
}

const CTRL: usize = 32; // CMSG_SPACE(sizeof(struct in_pktinfo)) on 64-bit Linux

/// Send every datagram, BATCH per sendmmsg. Returns how many the kernel took.
pub fn send_batch(fd: RawFd, out: &[Out]) -> usize {
    let mut done = 0;
    for chunk in out.chunks(BATCH) {
        let n = chunk.len();
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut ctrl = [[0u64; CTRL / 8]; BATCH];
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, o) in chunk.iter().enumerate() {
            addrs[i] = to_sa(o.dst);
            iovs[i] = libc::iovec {
                iov_base: o.data.as_ptr() as *mut libc::c_void,
                iov_len: o.data.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if let Some(src) = o.src {
                unsafe {
                    let c = ctrl[i].as_mut_ptr() as *mut libc::cmsghdr;
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    let p = libc::CMSG_DATA(c) as *mut libc::in_pktinfo;
                    std::ptr::write_unaligned(
                        p,
                        libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(src).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        },
                    );
                }
                h.msg_control = ctrl[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = CTRL as _;
            }
        }
        let mut off = 0;
        let mut errors = 0;
        while off < n && errors < 8 {
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().add(off), (n - off) as u32, 0) };
            if r <= 0 {
                // A full socket buffer (EAGAIN/ENOBUFS) or a refused
                // destination: drop the rest of this chunk after a few tries.
                errors += 1;
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED) {
                    continue;
                }
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            off += r as usize;
            done += r as usize;
        }
    }
    done
}

/// Receive buffers for recvmmsg: `BATCH` slots of `SLOT` bytes.
pub struct Recv {
    pub bufs: Vec<[u8; SLOT]>,
    pub lens: Vec<usize>,
    pub from: Vec<SocketAddrV4>,
    /// With [`Recv::with_pktinfo`]: each datagram's destination address
    /// (IP_PKTINFO, the socket needs [`enable_pktinfo`]).
    pub to: Option<Vec<Ipv4Addr>>,
}

/// Ask for IP_PKTINFO on received datagrams.
pub fn enable_pktinfo(fd: RawFd) {
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Recv {
    pub fn new(slots: usize) -> Self {
        Recv {
            bufs: vec![[0u8; SLOT]; slots],
            lens: vec![0; slots],
            from: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); slots],
            to: None,
        }
    }

    pub fn with_pktinfo(slots: usize) -> Self {
        let mut r = Recv::new(slots);
        r.to = Some(vec![Ipv4Addr::UNSPECIFIED; slots]);
        r
    }

    /// recvmmsg into slots `first..first+max`, each at byte offset `off`.
    /// `flags`: MSG_WAITFORONE (blocking socket) or MSG_DONTWAIT. Returns
    /// the count, 0 on timeout/EAGAIN.
    pub fn recv(&mut self, fd: RawFd, first: usize, max: usize, off: usize, flags: i32) -> usize {
        let max = max.min(self.bufs.len() - first).min(BATCH);
        if max == 0 {
            return 0;
        }
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut ctrl = [[0u64; CTRL / 8]; BATCH];
        let want_to = self.to.is_some();
        for i in 0..max {
            iovs[i] = libc::iovec {
                iov_base: self.bufs[first + i][off..].as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT - off,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if want_to {
                h.msg_control = ctrl[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = CTRL as _;
            }
        }
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                max as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            return 0;
        }
        let r = r as usize;
        for i in 0..r {
            self.lens[first + i] = hdrs[i].msg_len as usize;
            self.from[first + i] = from_sa(&addrs[i]);
            if let Some(to) = self.to.as_mut() {
                to[first + i] = unsafe { pktinfo_dst(&hdrs[i].msg_hdr) };
            }
        }
        r
    }
}

/// The destination address in a received message's IP_PKTINFO.
unsafe fn pktinfo_dst(h: &libc::msghdr) -> Ipv4Addr {
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let p: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                return Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    Ipv4Addr::UNSPECIFIED
}

/// Let the calling thread's sleeps end within ~1 µs of their deadline
/// (the default timer slack is 50 µs).
pub fn precise_sleeps() {
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A free UDP port on 127.0.0.1 (bound and released: a small race, retried
/// by the caller's readiness check).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(3478)
}

/// Source addresses for clients: fresh addresses, never reused in one run
/// (coturn keeps a deleted allocation's 5-tuple for up to a minute); none
/// ends in .0 or .255.
pub struct Sources {
    next: u32,
    first: u32,
    end: u32,
}

impl Sources {
    pub fn new() -> Self {
        // 127.1.0.1 upwards; 127.0.0.0/16 is left to the servers.
        Sources::range(Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 255, 255, 0))
    }
    /// `first` up to (not including) `end`, then `first` again.
    pub fn range(first: Ipv4Addr, end: Ipv4Addr) -> Self {
        let first = u32::from(first);
        Sources {
            next: first,
            first,
            end: u32::from(end),
        }
    }
    pub fn next(&mut self) -> Ipv4Addr {
        loop {
            self.next += 1;
            if self.next >= self.end {
                self.next = self.first;
            }
            let last = self.next & 0xff;
            if last != 0 && last != 255 {
                return Ipv4Addr::from(self.next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_their_range_and_skip_network_and_broadcast() {
        let mut s = Sources::range(Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 1, 2));
        let all: Vec<Ipv4Addr> = (0..600).map(|_| s.next()).collect();
        assert_eq!(all[0], Ipv4Addr::new(10, 78, 0, 2));
        assert!(all.iter().all(|a| {
            let o = a.octets();
            o[..2] == [10, 78] && o[2] <= 1 && o[3] != 0 && o[3] != 255
        }));
        // 10.78.0.1 ..= 10.78.1.1 less .0.255 and .1.0: 255 addresses,
        // then the same again.
        let first_lap = all
            .iter()
            .position(|a| *a == Ipv4Addr::new(10, 78, 0, 1))
            .unwrap();
        assert_eq!(all[first_lap - 1], Ipv4Addr::new(10, 78, 1, 1));
        assert_eq!(all[first_lap + 1..first_lap + 1 + 255], all[..255]);
        let mut lo = Sources::new();
        assert_eq!(lo.next(), Ipv4Addr::new(127, 1, 0, 2));
    }
}
