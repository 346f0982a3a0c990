//! Data from peers back to clients: ChannelData when a channel is bound
//! (RFC 8656 §12.7), otherwise a Data indication (§11.3).

use std::net::SocketAddr;
use std::time::Instant;

use super::stats::{Direction, TrafficCount, Transport};
use super::usage::Fact;
use super::{Engine, Output};
use crate::addr::{AllocId, ClientAddr, PeerAddr};
use crate::proto::channel_data;

/// Largest payload a Data indication can carry: a 65,535-byte body less
/// XOR-PEER-ADDRESS (IPv6: 24 bytes) and the DATA header (4), padded.
const MAX_DATA_INDICATION_PAYLOAD: usize = 65_535 - 24 - 4 - 3;

/// A packet for a client: send `buf[start..end]` to `client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToClient {
    pub client: ClientAddr,
    pub start: usize,
    pub end: usize,
}

impl Engine {
    /// A packet from `peer` on the relay socket of `id`, at
    /// `buf[start..end]`, with at least [`channel_data::HEADROOM`] bytes
    /// before `start` and [`channel_data::TAILROOM`] after `end`. Without a
    /// permission for the peer's IP the packet is dropped (§9), and so is
    /// one from a port of this host's own addresses that the policy denies.
    /// Framing is written in place: nothing is allocated.
    #[inline]
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        buf: &mut [u8],
        start: usize,
        end: usize,
    ) -> Option<ToClient> {
        let peer = PeerAddr(peer);
        let reaches = super::reaches(&self.cfg);
        let Some(a) = self.allocs.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.stats.dropped += 1;
            return None;
        };
        // From this host's own addresses, only what a client could send to
        // comes back (a live relay port, or what `allow` opened).
        if !a.permits(peer.0, now, reaches) {
            self.stats.dropped += 1;
            return None;
        }
        let client = a.client;
        let channel = a.channel_by_peer(peer, now).map(|c| c.number.get());
        // Without a channel the payload goes in a Data indication, whose
        // length field cannot describe more than 65,535 bytes of body.
        if channel.is_none() && end - start > MAX_DATA_INDICATION_PAYLOAD {
            self.stats.dropped += 1;
            return None;
        }
        if !a.admit(now, Direction::ToClient, end - start, &self.cfg.live.limits) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.stats
            .traffic(Direction::ToClient, Transport::of(client.via))
            .add(end - start);
        let (s, e) = match channel {
            Some(n) => channel_data::frame_in_place(buf, start, end, n, client.via.is_stream()),
            None => {
                let txid = super::next_txid(&mut self.txid_counter);
                channel_data::data_indication_in_place(buf, start, end, peer.0, txid)
            }
        };
        a.framed(Direction::ToClient, e - s);
        Some(ToClient {
            client,
            start: s,
            end: e,
        })
    }
}

/// What a kernel fast path relayed for one allocation and direction since
/// its last report: ChannelData of bound channels over UDP (RFC 8656
/// §12), which never reached [`Engine::handle_client`] or
/// [`Engine::handle_peer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelRelayed {
    /// Packets relayed, and their application data in bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped over the allocation's ceilings.
    pub limited: u64,
}

impl Engine {
    /// Count what a kernel fast path relayed for allocation `id` in `dir`
    /// as the userspace path counts its own packets: the allocation's
    /// traffic and framed traffic (unpadded ChannelData over UDP: 4 bytes
    /// of header each), the server's relayed traffic for UDP clients, and
    /// the packets dropped over a ceiling. An allocation gone since still
    /// counts in the server's totals. What the kernel relayed is also
    /// taken from the allocation's own meter, so that both paths together
    /// stay within one ceiling (the kernel's bucket is debited in turn
    /// with [`Engine::relayed_in_userspace`]).
    pub fn kernel_relayed(&mut self, id: AllocId, dir: Direction, k: KernelRelayed) {
        let t = self.stats.traffic(dir, Transport::Udp);
        t.packets += k.packets;
        t.bytes += k.bytes;
        self.stats.rate_limited += k.limited;
        let limits = &self.cfg.live.limits;
        if let Some(a) = self.allocs.get_mut(id.0 as usize).and_then(Option::as_mut) {
            let i = dir.index();
            a.meters[i].debit(k.packets, k.bytes, limits);
            a.kernel_traffic[i].packets += k.packets;
            a.kernel_traffic[i].bytes += k.bytes;
            a.traffic[i].packets += k.packets;
            a.traffic[i].bytes += k.bytes;
            a.framed[i].packets += k.packets;
            a.framed[i].bytes += k.bytes + 4 * k.packets;
        } else if k.packets > 0 {
            self.late_usage(id, dir, k);
        }
    }

    /// Add what the kernel relayed for allocation `id`, ended, to its final
    /// usage fact if that is still queued.
    fn late_usage(&mut self, id: AllocId, dir: Direction, k: KernelRelayed) {
        let Some(&(_, serial)) = self.ended.iter().find(|(a, _)| *a == id) else {
            return;
        };
        let fact = self.out.iter_mut().find_map(|o| match o {
            Output::Usage(u) if u.serial == serial => match &mut u.fact {
                Fact::Deleted { last, total } => Some((last, total)),
                _ => None,
            },
            _ => None,
        });
        let Some((last, total)) = fact else {
            return;
        };
        for c in [last, total] {
            // Framed as unpadded ChannelData over UDP: 4 bytes a packet.
            let (client, peers) = match dir {
                Direction::ToPeer => (&mut c.from_client, &mut c.to_peers),
                Direction::ToClient => (&mut c.to_client, &mut c.from_peers),
            };
            client.packets += k.packets;
            client.bytes += k.bytes + 4 * k.packets;
            peers.packets += k.packets;
            peers.bytes += k.bytes;
        }
    }
}

impl Engine {
    /// What allocation `id` relayed through this engine (not a kernel
    /// fast path) since it began, by [`Direction`]: packets and
    /// application data bytes; `None` if it is gone.
    pub fn relayed_in_userspace(&self, id: AllocId) -> Option<[TrafficCount; Direction::COUNT]> {
        let a = self.allocs.get(id.0 as usize)?.as_ref()?;
        Some(std::array::from_fn(|i| TrafficCount {
            packets: a.traffic[i].packets - a.kernel_traffic[i].packets,
            bytes: a.traffic[i].bytes - a.kernel_traffic[i].bytes,
        }))
    }
}
