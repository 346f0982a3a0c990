//! The engine's channel bindings as the kernel program's map entries: a
//! pure translation of [`Grant`]s into [`Op`]s, with no map, clock or
//! socket, so that every rule is tested on values.
//!
//! A channel (RFC 8656 §12) is in the kernel only while all of these hold:
//! the engine reported it created or refreshed and not since expired or
//! removed; its client came over a UDP listener on a specific address;
//! client, listener, peer and relay are of one family; the engine reports
//! a live permission for the peer's IP (§9) that the policy lets through
//! to every port ([`Reach::Any`]: anything narrower is checked packet by
//! packet in userspace); and a channel slot and an allocation slot were
//! free. Its entries expire with the earlier of the channel and the
//! permission, so the kernel stops at that time even before the engine's
//! report of the expiry arrives. Allocation ends, revocations and policy
//! reloads reach the engine's tables as [`Change::Removed`] of each
//! channel and permission, and so leave the kernel here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Change, Grant, Granted};
use crate::policy::Reach;

/// One flow as the program keys it: a packet's source and destination,
/// and for a client's ChannelData its channel number (0: a peer's flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub channel: u16,
}

/// What a flow's packets become: their new source and destination, the
/// channel to frame them on (0: unwrap ChannelData, to the peer), the
/// slots that count and meter them, and when the entry dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTarget {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub channel: u16,
    pub chan_slot: u32,
    pub alloc_slot: u32,
    pub expires: Instant,
}

/// A change to the program's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add or replace a flow.
    Put(FlowKey, FlowTarget),
    /// Remove a flow.
    Delete(FlowKey),
    /// An allocation slot taken for `alloc`: its buckets start full with
    /// these ceilings (per second, 0: none), as the engine's meters do.
    Ceilings {
        slot: u32,
        packet_rate: u64,
        bandwidth: u64,
    },
    /// A channel slot leaves `alloc` (its flows are deleted first): its
    /// last counts go to the engine, then it is zeroed for reuse.
    RetireChannel { slot: u32, alloc: AllocId },
    /// An allocation slot leaves `alloc`: its last drop counts go to the
    /// engine, then it is reset for reuse.
    RetireAlloc { slot: u32, alloc: AllocId },
}

/// A pool of slot numbers below a capacity (the size of a program's
/// array map), shared by every host's mirror.
#[derive(Debug)]
pub struct Slots {
    free: Vec<u32>,
    next: u32,
    capacity: u32,
}

impl Slots {
    pub fn new(capacity: u32) -> Self {
        Slots {
            free: Vec::new(),
            next: 0,
            capacity,
        }
    }

    /// A free slot, if any is left.
    pub fn take(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        (self.next < self.capacity).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn give(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// The two pools: channel slots (counters) and allocation slots
/// (ceilings).
#[derive(Debug)]
pub struct Pools {
    pub channels: Slots,
    pub allocs: Slots,
}

/// A channel the engine holds, and where it is in the kernel if it is.
#[derive(Debug, Clone, Copy)]
struct Chan {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
    /// Its slot while its flows are in the kernel.
    slot: Option<u32>,
}

/// What the mirror knows of one allocation.
#[derive(Debug)]
struct Alloc {
    client: ClientAddr,
    /// The relayed transport address by family, as its packets arrive
    /// (IPv4, IPv6).
    relay: [Option<SocketAddr>; 2],
    /// Live permissions that reach every port, with their expiry.
    perms: Vec<(IpAddr, Instant)>,
    chans: Vec<Chan>,
    /// Its slot while one of its channels is in the kernel, and how many are.
    slot: Option<u32>,
    in_kernel: u32,
}

/// One host's channels, as the engine reports them, and their kernel
/// flows.
#[derive(Debug)]
pub struct Mirror {
    /// By `[[listen]]` index: the address of a UDP TURN listener on a
    /// specific address, whose clients may be relayed in the kernel.
    listeners: Vec<Option<SocketAddr>>,
    allocs: HashMap<AllocId, Alloc>,
    /// Packet-rate and bandwidth ceilings per direction (0: none).
    packet_rate: u64,
    bandwidth: u64,
}

impl Mirror {
    pub fn new(listeners: Vec<Option<SocketAddr>>, packet_rate: u64, bandwidth: u64) -> Self {
        Mirror {
            listeners,
            allocs: HashMap::new(),
            packet_rate,
            bandwidth,
        }
    }

    /// The ceilings slots get now: (packet rate, bandwidth).
    pub fn ceilings(&self) -> (u64, u64) {
        (self.packet_rate, self.bandwidth)
    }

    /// New ceilings (a reload), for allocation slots taken from now on.
    pub fn set_ceilings(&mut self, packet_rate: u64, bandwidth: u64) {
        self.packet_rate = packet_rate;
        self.bandwidth = bandwidth;
    }

    /// Channels in the kernel now.
    pub fn in_kernel(&self) -> usize {
        self.allocs.values().map(|a| a.in_kernel as usize).sum()
    }

    /// Every channel slot in the kernel, with its allocation.
    pub fn channel_slots(&self) -> impl Iterator<Item = (AllocId, u32)> + '_ {
        self.allocs
            .iter()
            .flat_map(|(id, a)| a.chans.iter().filter_map(move |c| Some((*id, c.slot?))))
    }

    /// Every allocation slot in use, with its allocation.
    pub fn alloc_slots(&self) -> impl Iterator<Item = (AllocId, u32)> + '_ {
        self.allocs
            .iter()
            .filter_map(|(id, a)| Some((*id, a.slot?)))
    }

    /// Take in one report of the engine; `relay` is the relayed transport
    /// address as packets arrive at it (the socket's bound address, where
    /// that differs from the advertised `g.relay`). The map changes go to
    /// `ops`, in the order to apply them.
    pub fn grant(&mut self, g: &Grant, relay: SocketAddr, pools: &mut Pools, ops: &mut Vec<Op>) {
        let live = matches!(g.change, Change::Created | Change::Refreshed);
        let a = self.allocs.entry(g.alloc).or_insert_with(|| Alloc {
            client: g.client,
            relay: [None; 2],
            perms: Vec::new(),
            chans: Vec::new(),
            slot: None,
            in_kernel: 0,
        });
        a.client = g.client;
        a.relay[relay.is_ipv6() as usize] = Some(relay);
        let (ip, only) = match g.what {
            Granted::Permission { ip, reach } => {
                a.perms.retain(|(p, _)| *p != ip);
                if live && reach == Reach::Any {
                    a.perms.push((ip, g.expires));
                }
                (ip, None)
            }
            Granted::Channel { number, peer } => {
                let n = number.get();
                let at = a.chans.iter().position(|c| c.number == n);
                match (at, live) {
                    (Some(i), true) => {
                        a.chans[i].peer = peer.0;
                        a.chans[i].expires = g.expires;
                    }
                    (None, true) => a.chans.push(Chan {
                        number: n,
                        peer: peer.0,
                        expires: g.expires,
                        slot: None,
                    }),
                    (Some(i), false) => {
                        let c = a.chans.remove(i);
                        if c.slot.is_some() {
                            self.unmirror(g.alloc, c, pools, ops);
                        }
                    }
                    (None, false) => {}
                }
                (peer.0.ip(), Some(n))
            }
        };
        self.sync(g.alloc, ip, only, pools, ops);
        if let Some(a) = self.allocs.get(&g.alloc)
            && a.perms.is_empty()
            && a.chans.is_empty()
        {
            self.allocs.remove(&g.alloc);
        }
    }

    /// Bring the kernel in line with the engine for `alloc`'s channels to
    /// peers at `ip` (only channel `only`, if given).
    fn sync(
        &mut self,
        alloc: AllocId,
        ip: IpAddr,
        only: Option<u16>,
        pools: &mut Pools,
        ops: &mut Vec<Op>,
    ) {
        let Some(a) = self.allocs.get(&alloc) else {
            return;
        };
        for i in 0..a.chans.len() {
            let a = &self.allocs[&alloc];
            let c = a.chans[i];
            if c.peer.ip() != ip || only.is_some_and(|n| n != c.number) {
                continue;
            }
            match self.flows(a, &c) {
                Some((expires, listener, relay)) => {
                    self.install(alloc, i, expires, listener, relay, pools, ops)
                }
                None if c.slot.is_some() => {
                    let a = self.allocs.get_mut(&alloc).expect("present");
                    let c = a.chans[i].slot.take();
                    let chan = Chan {
                        slot: c,
                        ..a.chans[i]
                    };
                    self.unmirror(alloc, chan, pools, ops);
                }
                None => {}
            }
        }
    }

    /// Whether channel `c` of `a` may be in the kernel: its entries'
    /// expiry, the listener and the relay address.
    fn flows(&self, a: &Alloc, c: &Chan) -> Option<(Instant, SocketAddr, SocketAddr)> {
        let Via::Udp(l) = a.client.via else {
            return None;
        };
        let listener = (*self.listeners.get(l as usize)?)?;
        let v6 = c.peer.is_ipv6();
        let relay = a.relay[v6 as usize]?;
        let same = [a.client.remote, listener, relay]
            .iter()
            .all(|s| s.is_ipv6() == v6);
        let perm = a.perms.iter().find(|(ip, _)| *ip == c.peer.ip())?.1;
        same.then_some((c.expires.min(perm), listener, relay))
    }

    /// Put channel `i` of `alloc` in the kernel (or renew it there).
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        alloc: AllocId,
        i: usize,
        expires: Instant,
        listener: SocketAddr,
        relay: SocketAddr,
        pools: &mut Pools,
        ops: &mut Vec<Op>,
    ) {
        let (packet_rate, bandwidth) = (self.packet_rate, self.bandwidth);
        let a = self.allocs.get_mut(&alloc).expect("present");
        let fresh = a.chans[i].slot.is_none();
        if fresh {
            let Some(cs) = pools.channels.take() else {
                return;
            };
            if a.slot.is_none() {
                let Some(s) = pools.allocs.take() else {
                    pools.channels.give(cs);
                    return;
                };
                a.slot = Some(s);
                ops.push(Op::Ceilings {
                    slot: s,
                    packet_rate,
                    bandwidth,
                });
            }
            a.chans[i].slot = Some(cs);
            a.in_kernel += 1;
        }
        let c = a.chans[i];
        let (chan_slot, alloc_slot) = (c.slot.expect("set"), a.slot.expect("set"));
        let client = a.client.remote;
        ops.push(Op::Put(
            FlowKey {
                src: client,
                dst: listener,
                channel: c.number,
            },
            FlowTarget {
                src: relay,
                dst: c.peer,
                channel: 0,
                chan_slot,
                alloc_slot,
                expires,
            },
        ));
        ops.push(Op::Put(
            FlowKey {
                src: c.peer,
                dst: relay,
                channel: 0,
            },
            FlowTarget {
                src: listener,
                dst: client,
                channel: c.number,
                chan_slot,
                alloc_slot,
                expires,
            },
        ));
    }

    /// Take channel `c` of `alloc` (its slot in `c.slot`, already gone from
    /// the allocation's list or cleared there) out of the kernel.
    fn unmirror(&mut self, alloc: AllocId, c: Chan, pools: &mut Pools, ops: &mut Vec<Op>) {
        let Some(slot) = c.slot else {
            return;
        };
        let Some(a) = self.allocs.get_mut(&alloc) else {
            return;
        };
        let v6 = c.peer.is_ipv6();
        if let (Via::Udp(l), Some(relay)) = (a.client.via, a.relay[v6 as usize])
            && let Some(Some(listener)) = self.listeners.get(l as usize)
        {
            ops.push(Op::Delete(FlowKey {
                src: a.client.remote,
                dst: *listener,
                channel: c.number,
            }));
            ops.push(Op::Delete(FlowKey {
                src: c.peer,
                dst: relay,
                channel: 0,
            }));
        }
        ops.push(Op::RetireChannel { slot, alloc });
        pools.channels.give(slot);
        a.in_kernel -= 1;
        if a.in_kernel == 0
            && let Some(s) = a.slot.take()
        {
            ops.push(Op::RetireAlloc { slot: s, alloc });
            pools.allocs.give(s);
        }
    }
}

#[cfg(test)]
mod tests;
