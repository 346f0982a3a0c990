//! A UDP shard: one [`Host`] with its SO_REUSEPORT listener sockets, whose
//! sockets an epoll set watches. The kernel hashes a client's 5-tuple to
//! one listener socket, so the shard of that socket owns the client's
//! allocation for its whole life.
//!
//! Per wake-up: datagrams are read with `recvmmsg` into the host's batch,
//! the engine handles them in place, and what they relay is queued; the
//! queue goes out with one `sendmmsg` per socket once every ready socket
//! was read (or sooner, when the batch is nearly full). STUN answers leave
//! at once, each with its own `sendto`.

use std::net::UdpSocket;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::LOG;
use super::dtls::{self, Dtls, Plain};
use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Engine, EngineConfig};
use crate::io::command::{HostCommand, Mailbox};
use crate::io::host::{Bound, Drained, Host, Transport};
use crate::io::mmsg::{self, Batch, Out};
use crate::io::poll::{self, Epoll, EventFd};
use crate::io::stream::guard::StreamGuard;

// Event tokens: shard index in the top byte, what the fd is in the next,
// an index (listener, allocation) in the low 32 bits.
const LISTENER: u64 = 0;
const RELAY_V4: u64 = 1;
const RELAY_V6: u64 = 2;
const MAILBOX: u64 = 3;

fn token(shard: usize, kind: u64, index: u32) -> u64 {
    (shard as u64) << 56 | kind << 48 | index as u64
}

/// The token of allocation `id`'s IPv6 (`v6`) or IPv4 relay socket.
fn relay_token(shard: usize, id: AllocId, v6: bool) -> u64 {
    token(shard, if v6 { RELAY_V6 } else { RELAY_V4 }, id.0)
}

/// A shard's way to its clients and its readiness: UDP listener sockets,
/// and the epoll set of the driver it is with.
pub(super) struct Listeners {
    index: usize,
    /// UDP listener sockets by `[[listen]]` index.
    udp: Vec<Option<UdpSocket>>,
    /// The epoll set of the driver this shard is with.
    epfd: i32,
    /// The DTLS listeners among `udp`, with their sessions.
    dtls: Dtls,
    /// The application data of the DTLS datagram being read.
    plain: Plain,
}

impl Listeners {
    /// The UDP listener socket of `[[listen]]` entry `l`.
    #[inline]
    fn get(&self, l: u16) -> Option<&UdpSocket> {
        self.udp.get(l as usize)?.as_ref()
    }
}

impl Transport for Listeners {
    type Relay = UdpSocket;
    /// [`Self::release`] hands a relay socket back: it can be parked.
    const PARKS: bool = true;

    fn watch(&mut self, new: Bound) -> Option<UdpSocket> {
        let t = relay_token(self.index, new.id, new.bind.is_ipv6());
        if let Err(e) = poll::add(self.epfd, new.socket.as_raw_fd(), t) {
            tracing::warn!(target: LOG, bind = %new.bind, "cannot watch a relay socket: {e}");
            return None;
        }
        Some(new.socket)
    }

    /// A parked socket stays in the epoll set under the token of the
    /// allocation that had it (no `epoll_ctl` now): [`Shard::ready`] empties
    /// it if peers still send to it.
    fn park(&mut self, relay: UdpSocket) -> Option<UdpSocket> {
        Some(relay)
    }

    /// The parked socket is in the epoll set under `was`'s token: the same
    /// token needs nothing, another is one `EPOLL_CTL_MOD`.
    fn rewatch(&mut self, new: Bound, was: AllocId) -> Option<UdpSocket> {
        if was == new.id {
            return Some(new.socket);
        }
        let t = relay_token(self.index, new.id, new.bind.is_ipv6());
        if let Err(e) = poll::modify(self.epfd, new.socket.as_raw_fd(), t) {
            tracing::warn!(target: LOG, bind = %new.bind, "cannot watch a relay socket: {e}");
            return None;
        }
        Some(new.socket)
    }

    /// A closed socket leaves the epoll set by itself.
    fn unwatch(&mut self, _relay: UdpSocket, _now: Instant) {}

    /// Out of this shard's epoll set, to be watched by another shard.
    fn release(&mut self, relay: UdpSocket) -> Option<UdpSocket> {
        poll::remove(self.epfd, relay.as_raw_fd());
        Some(relay)
    }

    /// False (a send drop) only when the socket buffer is full, as for
    /// relayed data ([`mmsg`]'s `sendmmsg`): a destination the kernel
    /// refuses is not what the drop counter's HELP says it counts.
    fn to_client(&mut self, client: ClientAddr, data: &[u8]) -> bool {
        match client.via {
            Via::Udp(l) => self
                .get(l)
                .is_some_and(|s| match s.send_to(data, client.remote) {
                    Ok(_) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                }),
            Via::Dtls(l) => self.dtls.send(l, client.remote, data),
            // A UDP shard has no stream clients.
            Via::Stream { .. } => false,
        }
    }

    /// A DTLS client's version and cipher suite, for usage events.
    fn tls_names(&self, client: ClientAddr) -> Option<crate::cluster::usage::TlsNames> {
        match client.via {
            Via::Dtls(l) => self.dtls.names(l, client.remote),
            _ => None,
        }
    }

    /// Queued, to leave with the round's `sendmmsg` on the listener.
    #[inline]
    fn frame_to_client(
        &mut self,
        outs: &mut Vec<Out>,
        batch: &Batch,
        client: ClientAddr,
        frame: Range<usize>,
    ) -> bool {
        if let Via::Dtls(l) = client.via {
            return self.dtls.send(l, client.remote, &batch.data[frame]);
        }
        // The other clients of a UDP shard are on its UDP listeners.
        if let Via::Udp(l) = client.via
            && let Some(s) = self.get(l)
        {
            outs.push(Out {
                fd: s.as_raw_fd(),
                start: frame.start,
                end: frame.end,
                to: client.remote,
            });
        }
        true
    }
}

/// One engine host and its UDP sockets, with the mailbox of its commands.
pub struct Shard {
    pub(super) index: usize,
    pub(super) host: Host<Listeners>,
    commands: mpsc::UnboundedReceiver<HostCommand>,
    mailbox: Arc<EventFd>,
}

impl Shard {
    /// Shard `index` with its listener sockets; also the mailbox that
    /// reaches it.
    /// `dtls`: the DTLS listeners among `sockets`, and the connection
    /// limits their sessions count against (shared with TCP and TLS).
    pub fn new(
        index: usize,
        cfg: EngineConfig,
        sockets: Vec<(u16, UdpSocket)>,
        dtls: (Vec<(u16, dtls::Acceptor)>, Arc<StreamGuard>),
        now: Instant,
        unix_now: u64,
    ) -> std::io::Result<(Box<Shard>, Mailbox)> {
        let mut udp: Vec<Option<UdpSocket>> = Vec::new();
        for (i, s) in sockets {
            let i = i as usize;
            if udp.len() <= i {
                udp.resize_with(i + 1, || None);
            }
            udp[i] = Some(s);
        }
        let (tx, commands) = mpsc::unbounded_channel();
        let mailbox = Arc::new(EventFd::new()?);
        let listeners = Listeners {
            index,
            udp,
            epfd: -1,
            dtls: Dtls::new(dtls.0, dtls.1, now),
            plain: Plain::default(),
        };
        let shard = Box::new(Shard {
            index,
            host: Host::new(Engine::new(cfg, now, unix_now), listeners),
            commands,
            mailbox: mailbox.clone(),
        });
        Ok((shard, Mailbox::woken_by(tx, mailbox)))
    }

    /// Mirror this shard's channels into the kernel fast path.
    pub fn set_fastpath(&mut self, path: crate::io::fastpath::HostPath) {
        self.host.set_fastpath(path);
    }

    /// Every fd of this shard with its token.
    fn fds(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        let i = self.index;
        let listeners = self.host.transport.udp.iter().enumerate();
        let listeners = listeners.filter_map(move |(l, s)| {
            s.as_ref()
                .map(|s| (s.as_raw_fd(), token(i, LISTENER, l as u32)))
        });
        // Parked sockets are watched under their last allocation's token.
        let relays = self.host.relay_fds().chain(self.host.parked_fds());
        let relays = relays.map(move |(id, v6, fd)| (fd, relay_token(i, id, v6)));
        std::iter::once((self.mailbox.raw(), token(i, MAILBOX, 0)))
            .chain(listeners)
            .chain(relays)
    }

    /// Register every fd with the epoll set `ep`.
    pub(super) fn attach(&mut self, ep: &Epoll) {
        self.host.transport.epfd = ep.raw();
        for (fd, t) in self.fds() {
            if let Err(e) = poll::add(ep.raw(), fd, t) {
                tracing::error!(target: LOG, shard = self.index, "cannot watch a socket: {e}");
            }
        }
    }

    /// Unregister every fd from the current epoll set.
    pub(super) fn detach(&mut self) {
        self.host.send_queued();
        let epfd = self.host.transport.epfd;
        for (fd, _) in self.fds() {
            poll::remove(epfd, fd);
        }
        self.host.transport.epfd = -1;
    }

    /// Read the socket behind a token of kind `kind` and `index`, and
    /// handle what came.
    pub(super) fn ready(&mut self, now: Instant, kind: u64, index: u32) {
        match kind {
            LISTENER => {
                let l = index as u16;
                let Some(fd) = self.host.transport.get(l).map(|s| s.as_raw_fd()) else {
                    return;
                };
                if self.host.transport.dtls.listens(l) {
                    self.host.read(
                        now,
                        |b| mmsg::recv(fd, b),
                        |h, now, i| dtls_datagram(h, now, l, fd, i),
                    );
                } else {
                    let via = Via::Udp(l);
                    self.host.read(
                        now,
                        |b| mmsg::recv(fd, b),
                        |h, now, i| h.client_datagram(now, via, i),
                    );
                }
            }
            RELAY_V4 | RELAY_V6 => {
                let id = AllocId(index);
                let v6 = kind == RELAY_V6;
                let read = self
                    .host
                    .relay_fd(id, v6)
                    .map(|fd| self.host.read_relay(now, id, |b| mmsg::recv(fd, b)));
                // The token may be a parked socket's, that `id` had last.
                // Only an event that found the live socket empty needs the
                // scan: the set is level-triggered, so a parked socket
                // still readable raises the event again.
                if matches!(read, None | Some(Drained::Empty)) {
                    self.host.drain_parked(id, v6);
                }
            }
            _ => self.commands(now),
        }
    }

    /// End of a round of events: send the queue, run due timers, compact.
    pub(super) fn end_round(&mut self, now: Instant) {
        self.host.end_round();
        self.host.timers(now);
        self.host.transport.dtls.sweep(now);
        self.host.compact_if_due();
    }

    /// Carry out the control plane's commands. The lines held so far go
    /// out first: a report (metrics, admin API) that counts an event of
    /// this round leaves after the event's line.
    fn commands(&mut self, now: Instant) {
        crate::log::write_held();
        self.mailbox.clear();
        while let Ok(c) = self.commands.try_recv() {
            self.host.command(c, now);
        }
    }

    /// The first engine or DTLS deadline.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let engine = self.host.poll_timeout();
        let dtls = self.host.transport.dtls.deadline();
        engine.into_iter().chain(dtls).min()
    }

    /// Close every allocation, on stop.
    pub(super) fn close(&mut self) {
        self.host.close_all(Instant::now());
    }
}

/// Datagram `i` of the batch, from a client of DTLS listener `l` (socket
/// `fd`): through its DTLS session, and each STUN message or ChannelData
/// it carried to the engine as if it came over UDP (RFC 7350).
fn dtls_datagram(h: &mut Host<Listeners>, now: Instant, l: u16, fd: RawFd, i: usize) {
    let (from, d, t) = h.datagram(i);
    let mut plain = std::mem::take(&mut t.plain);
    t.dtls.datagram(now, l, fd, from, d, &mut plain);
    let client = ClientAddr {
        remote: from,
        via: Via::Dtls(l),
    };
    let mut at = 0;
    for &end in &plain.ends {
        h.client_frame(now, client, &plain.data[at..end]);
        at = end;
    }
    h.transport.plain = plain;
}
