//! The zero-protocol forwarder: the ceiling of any relay on this machine.
//!
//! One thread, one epoll, two sockets, recvmmsg/sendmmsg throughout. The
//! client-facing socket receives ChannelData; channel 0x4000+i is forwarded
//! (header stripped) to the fixed peer from relayed address 127.0.2.(i+1)
//! (on loopback; in the veth topology 10.77.3.(i+1), netns.rs) (IP_PKTINFO
//! on one relay socket, so no flow costs a socket or a syscall
//! of its own); what arrives for 127.0.2.(i+1) goes back (header added) to
//! the last client address seen on channel i. No STUN, no permissions, no
//! timers, no allocation per packet. A real relay gives each allocation its
//! own port and so its own socket: it can only do worse per thread.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net::{self, Out, Recv};

const BASE: u16 = 0x4000;
const SOCK_BUF: usize = 4 << 20;
/// The forwarder exits on its own after this long, whatever happens.
const MAX_LIFE: Duration = Duration::from_secs(3600);

/// Relayed address of flow `i`: host i+1 of the /24 of `relays`.
fn relayed(relays: Ipv4Addr, i: usize) -> Ipv4Addr {
    let o = relays.octets();
    Ipv4Addr::new(o[0], o[1], o[2], (i + 1) as u8)
}

/// `relays`: the /24 of the relayed addresses (local addresses of this
/// host: 127.0.2.0 on loopback).
pub fn run(
    listen: SocketAddrV4,
    peer: SocketAddrV4,
    channels: usize,
    relays: Ipv4Addr,
) -> std::io::Result<()> {
    let channels = channels.min(250);
    let client = UdpSocket::bind(listen)?;
    client.set_nonblocking(true)?;
    net::set_buffers(client.as_raw_fd(), SOCK_BUF);
    let relay = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    relay.set_nonblocking(true)?;
    net::set_buffers(relay.as_raw_fd(), SOCK_BUF);
    net::enable_pktinfo(relay.as_raw_fd());
    let (cfd, rfd) = (client.as_raw_fd(), relay.as_raw_fd());
    let mut clients: Vec<Option<SocketAddrV4>> = vec![None; channels];
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (fd, tag) in [(cfd, 0u64), (rfd, 1u64)] {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: tag,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    println!("ready");
    let mut up = Recv::new(net::BATCH);
    let mut down = Recv::with_pktinfo(net::BATCH);
    let mut events: [libc::epoll_event; 4] = unsafe { std::mem::zeroed() };
    let born = Instant::now();
    while born.elapsed() < MAX_LIFE {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for e in events.iter().take(n.max(0) as usize) {
            if e.u64 == 0 {
                // Client → peer: strip the header.
                for _ in 0..8 {
                    let got = up.recv(cfd, 0, net::BATCH, 0, libc::MSG_DONTWAIT);
                    let mut outs: Vec<Out> = Vec::with_capacity(got);
                    for k in 0..got {
                        let p = &up.bufs[k][..up.lens[k]];
                        if p.len() < 4 {
                            continue;
                        }
                        let ch = u16::from_be_bytes([p[0], p[1]]).wrapping_sub(BASE) as usize;
                        let len = u16::from_be_bytes([p[2], p[3]]) as usize;
                        if ch >= channels || 4 + len > p.len() {
                            continue;
                        }
                        clients[ch] = Some(up.from[k]);
                        outs.push(Out {
                            src: Some(relayed(relays, ch)),
                            dst: peer,
                            data: &p[4..4 + len],
                        });
                    }
                    net::send_batch(rfd, &outs);
                    if got < net::BATCH {
                        break;
                    }
                }
            } else {
                // Peer → client: receive behind 4 bytes of headroom, frame.
                for _ in 0..8 {
                    let got = down.recv(rfd, 0, net::BATCH, 4, libc::MSG_DONTWAIT);
                    let mut dst = [None; net::BATCH];
                    let to = down.to.as_ref().unwrap();
                    for k in 0..got {
                        let o = to[k].octets();
                        if o[..3] != relays.octets()[..3] || o[3] == 0 || o[3] as usize > channels {
                            continue;
                        }
                        let ch = o[3] as usize - 1;
                        let len = down.lens[k];
                        let b = &mut down.bufs[k];
                        b[0..2].copy_from_slice(&(BASE + ch as u16).to_be_bytes());
                        b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                        dst[k] = clients[ch];
                    }
                    let outs: Vec<Out> = (0..got)
                        .filter_map(|k| {
                            dst[k].map(|c| Out {
                                src: None,
                                dst: c,
                                data: &down.bufs[k][..4 + down.lens[k]],
                            })
                        })
                        .collect();
                    net::send_batch(cfd, &outs);
                    if got < net::BATCH {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}
