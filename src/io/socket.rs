//! Socket setup: groups of SO_REUSEPORT sockets, one per worker.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive/send buffer for listener sockets: bursts are absorbed here, not
/// dropped (the kernel default of ~208 KB overflows under load).
const LISTEN_BUFFER: usize = 4 << 20;

fn new_socket(
    addr: SocketAddr,
    ty: Type,
    proto: Protocol,
    reuse_port: bool,
) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // Only for TCP: on UDP, SO_REUSEADDR would let two sockets share a port.
        s.set_reuse_address(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Check that nobody else holds `addr`: a socket without SO_REUSEPORT
/// fails to bind where any socket (even one with it) already sits, so a
/// second server cannot silently share our port.
fn probe(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<SocketAddr> {
    let s = new_socket(addr, ty, proto, false)?;
    s.bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    Ok(s.local_addr()?.as_socket().expect("inet"))
}

/// `n` UDP sockets sharing `addr` (port 0: a free port, the same for all).
pub fn udp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let addr = probe(addr, Type::DGRAM, Protocol::UDP)?;
    (0..n)
        .map(|_| {
            let s = new_socket(addr, Type::DGRAM, Protocol::UDP, true)?;
            grow_buffers(&s, LISTEN_BUFFER);
            s.bind(&addr.into())?;
            Ok(s.into())
        })
        .collect()
}

/// `n` TCP listeners sharing `addr`.
pub fn tcp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = probe(addr, Type::STREAM, Protocol::TCP)?;
    (0..n)
        .map(|_| {
            let s = new_socket(addr, Type::STREAM, Protocol::TCP, true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(s.into())
        })
        .collect()
}

/// A relay socket: exclusive, non-blocking. One is opened per Allocate
/// and closed with its allocation, so it is made with as few system calls
/// as can be: non-blocking from `socket()` on, and without the privileged
/// buffer options once they were refused (see [`grow_buffers`]).
pub fn relay(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let ty = Type::DGRAM.nonblocking();
    let s = Socket::new(Domain::for_address(addr), ty, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Bursts from a peer queue here; the memory is used only when they do.
    grow_buffers(&s, RELAY_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Datagrams [`drain`] reads at most before it gives up on a socket.
const DRAIN_MAX: usize = 256;

/// Read away what waits on the non-blocking socket `s` (a parked relay
/// socket: what peers of its last allocation sent), one truncated
/// datagram per call; false if more than [`DRAIN_MAX`] were waiting, for
/// a socket better closed than read for longer.
pub fn drain(s: &std::net::UdpSocket) -> bool {
    let mut byte = [0u8; 1];
    for _ in 0..DRAIN_MAX {
        match s.recv_from(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            // A datagram, or a pending error (an ICMP report), gone once read.
            _ => {}
        }
    }
    false
}

/// Receive buffer asked for relay sockets.
const RELAY_BUFFER: usize = 1 << 20;

/// Ask for `bytes` of receive and send buffer. The kernel caps SO_RCVBUF at
/// `net.core.rmem_max` (208 KB by default); with CAP_NET_ADMIN the FORCE
/// variants pass the cap, otherwise raise the sysctl for full effect.
/// Once the kernel refused a FORCE variant (no CAP_NET_ADMIN, which a
/// process does not gain later), later sockets skip it.
fn grow_buffers(s: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static FORCE_REFUSED: AtomicBool = AtomicBool::new(false);
    let v = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        };
        if !FORCE_REFUSED.load(Ordering::Relaxed) {
            if set(force) {
                continue;
            }
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                FORCE_REFUSED.store(true, Ordering::Relaxed);
            }
        }
        set(plain);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn drain_empties_a_socket_up_to_its_bound() {
        let relay = super::relay("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = relay.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let queued = |n: usize| {
            for i in 0..n {
                peer.send_to(&(i as u32).to_be_bytes(), at).unwrap();
            }
            // Loopback delivery is synchronous; wait a little all the same.
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(super::drain(&relay), "nothing waiting");
        queued(10);
        assert!(super::drain(&relay));
        let mut buf = [0u8; 16];
        assert_eq!(
            relay.recv_from(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "emptied"
        );
        // More than DRAIN_MAX waiting: it gives up.
        queued(super::DRAIN_MAX + 10);
        assert!(!super::drain(&relay));
    }

    #[test]
    fn a_relay_socket_is_non_blocking_and_exclusive() {
        let a = super::relay("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = a.local_addr().unwrap();
        let mut buf = [0u8; 16];
        let e = a.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        // No SO_REUSEADDR or SO_REUSEPORT: nobody else binds its port.
        assert!(super::relay(at).is_err());
        // A second one after the first, with the buffer options known.
        let b = super::relay("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            b.recv_from(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
}
