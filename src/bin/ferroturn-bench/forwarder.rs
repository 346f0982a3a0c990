//! The zero-protocol forwarder: the ceiling of any relay on this machine.
//!
//! One thread, one epoll. A client-facing socket receives ChannelData;
//! channel 0x4000+i is forwarded (header stripped) from relay socket i to the
//! fixed peer. What relay socket i receives goes back (header added) to the
//! last client address seen on channel i. recvmmsg/sendmmsg throughout; the
//! return direction is batched across relay sockets into one sendmmsg on the
//! client socket. No STUN, no permissions, no timers, no allocation.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net::{self, Out, Recv};

const BASE: u16 = 0x4000;
const SOCK_BUF: usize = 4 << 20;
/// The forwarder exits on its own after this long, whatever happens.
const MAX_LIFE: Duration = Duration::from_secs(3600);

pub fn run(listen: SocketAddrV4, peer: SocketAddrV4, channels: usize) -> std::io::Result<()> {
    let client = UdpSocket::bind(listen)?;
    client.set_nonblocking(true)?;
    net::set_buffers(client.as_raw_fd(), SOCK_BUF);
    let mut relays = Vec::with_capacity(channels);
    for _ in 0..channels {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        s.set_nonblocking(true)?;
        net::set_buffers(s.as_raw_fd(), SOCK_BUF);
        relays.push(s);
    }
    let mut clients: Vec<Option<SocketAddrV4>> = vec![None; channels];
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let add = |fd: i32, tag: u64| unsafe {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: tag,
        };
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
    };
    add(client.as_raw_fd(), u64::MAX);
    for (i, s) in relays.iter().enumerate() {
        add(s.as_raw_fd(), i as u64);
    }
    println!("ready");
    let cfd = client.as_raw_fd();
    let mut from_client = Recv::new(net::BATCH);
    // Return-direction pool: packets from any relay socket, sent in one go.
    let mut back = Recv::new(net::BATCH);
    let mut back_n = 0usize;
    let mut back_ch = [0usize; net::BATCH];
    let mut events: [libc::epoll_event; 256] = unsafe { std::mem::zeroed() };
    let born = Instant::now();
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(net::BATCH);
    let flush_back = |back: &mut Recv,
                      back_n: &mut usize,
                      back_ch: &[usize],
                      clients: &[Option<SocketAddrV4>]| {
        let outs: Vec<Out> = (0..*back_n)
            .filter_map(|k| {
                clients[back_ch[k]].map(|c| Out {
                    src: None,
                    dst: c,
                    data: &back.bufs[k][..4 + back.lens[k]],
                })
            })
            .collect();
        net::send_batch(cfd, &outs);
        *back_n = 0;
    };
    while born.elapsed() < MAX_LIFE {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for e in events.iter().take(n.max(0) as usize) {
            let tag = e.u64;
            if tag == u64::MAX {
                // Client → peer: strip the header, group by channel.
                for _ in 0..4 {
                    let got = from_client.recv(cfd, 0, net::BATCH, 0, libc::MSG_DONTWAIT);
                    if got == 0 {
                        break;
                    }
                    order.clear();
                    for k in 0..got {
                        let p = &from_client.bufs[k][..from_client.lens[k]];
                        if p.len() < 4 {
                            continue;
                        }
                        let ch = u16::from_be_bytes([p[0], p[1]]).wrapping_sub(BASE) as usize;
                        let len = u16::from_be_bytes([p[2], p[3]]) as usize;
                        if ch >= channels || 4 + len > p.len() {
                            continue;
                        }
                        clients[ch] = Some(from_client.from[k]);
                        order.push((ch, k));
                    }
                    order.sort_by_key(|&(ch, _)| ch);
                    let mut i = 0;
                    while i < order.len() {
                        let ch = order[i].0;
                        let mut j = i;
                        while j < order.len() && order[j].0 == ch {
                            j += 1;
                        }
                        let outs: Vec<Out> = order[i..j]
                            .iter()
                            .map(|&(_, k)| {
                                let p = &from_client.bufs[k];
                                let len = u16::from_be_bytes([p[2], p[3]]) as usize;
                                Out {
                                    src: None,
                                    dst: peer,
                                    data: &p[4..4 + len],
                                }
                            })
                            .collect();
                        net::send_batch(relays[ch].as_raw_fd(), &outs);
                        i = j;
                    }
                    if got < net::BATCH {
                        break;
                    }
                }
            } else {
                // Peer → client: receive behind 4 bytes of headroom, frame.
                let ch = tag as usize;
                let fd = relays[ch].as_raw_fd();
                for _ in 0..4 {
                    if back_n == net::BATCH {
                        flush_back(&mut back, &mut back_n, &back_ch, &clients);
                    }
                    let got = back.recv(fd, back_n, net::BATCH - back_n, 4, libc::MSG_DONTWAIT);
                    for k in back_n..back_n + got {
                        let len = back.lens[k] as u16;
                        back.bufs[k][0..2].copy_from_slice(&(BASE + ch as u16).to_be_bytes());
                        back.bufs[k][2..4].copy_from_slice(&len.to_be_bytes());
                        back_ch[k] = ch;
                    }
                    back_n += got;
                    if back_n < net::BATCH {
                        break;
                    }
                }
            }
        }
        if back_n > 0 {
            flush_back(&mut back, &mut back_n, &back_ch, &clients);
        }
    }
    Ok(())
}
