//! Allocate and Refresh (RFC 8656 §7).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::message::Message;

use super::allocation::{Allocation, State};
use super::ports::Relay;
use super::quota::{Held, Meter};
use super::stats::{Code, Direction, Transport};
use super::usage;
use super::{ATTR_ADDITIONAL_ADDRESS_FAMILY, Answer, Authed, Engine, Output, Reply};
use crate::addr::{AllocId, ClientAddr};
use crate::proto::stun as wire;

/// The target of this module's log lines (see [`super::LOG_TARGET`]).
const LOG_TARGET: &str = "ferroturn::engine::allocate";

/// UDP's protocol number, the only REQUESTED-TRANSPORT we relay (§7.2).
const PROTO_UDP: u8 = 17;
/// How many ports to try when binding one fails.
const BIND_TRIES: u8 = 8;

/// The relay families an Allocate gets.
#[derive(Debug, Clone, Copy)]
struct Families {
    /// The primary relay is IPv6.
    v6: bool,
    /// An IPv6 relay besides the IPv4 one (ADDITIONAL-ADDRESS-FAMILY).
    dual: bool,
    /// IPv6 was asked as the additional family but is not configured.
    v6_refused: bool,
}

impl Families {
    fn single(v6: bool) -> Self {
        Families {
            v6,
            dual: false,
            v6_refused: false,
        }
    }
}

/// An expiry no later than the credential's deadline, if it has one.
fn capped(expires: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(expires, |d| expires.min(d))
}

impl Engine {
    /// The lifetime to grant (§7.2, §7.3): the client's wish capped at the
    /// maximum, but never below the default.
    fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        match requested {
            Some(s) => Duration::from_secs(s as u64)
                .min(self.cfg.live.max_lifetime)
                .max(self.cfg.live.lifetime),
            None => self.cfg.live.lifetime,
        }
    }

    /// The cluster node a new Allocate of `client` goes to instead (see
    /// [`super::spread`]): none unless this node drains or is loaded above
    /// the threshold, and the shell named a node of the client's family
    /// and transport.
    fn spread_target(&self, client: ClientAddr) -> Option<super::spread::Target> {
        let s = &self.spread;
        let load = || {
            super::spread::load(
                self.cfg.shared.total(),
                s.capacity,
                self.free_ports(),
                s.range,
            )
        };
        let v6 = match client.remote {
            SocketAddr::V4(_) => false,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
        };
        s.target(self.draining.is_some(), load, v6, Transport::of(client.via))
            .cloned()
    }

    /// Allocate request (§7.2), after authentication.
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
        authed: Authed,
    ) {
        let signer = authed.signer;
        let err = |code: Code| authed.error(m, code);
        if self.by_client.contains_key(&client) {
            self.reply(client, err(Code::AllocationMismatch));
            return;
        }
        // RFC 8656 §7.2: a 300 may come at any point after authentication;
        // here, before anything is created or counted.
        if let Some(target) = self.spread_target(client) {
            self.stats.redirects += 1;
            let r = Reply::error(m, Code::TryAlternate).with(|r| {
                let r = r.address(ATTR_ALTERNATE_SERVER, target.address);
                match &target.domain {
                    Some(d) => r.bytes(ATTR_ALTERNATE_DOMAIN, d.as_bytes()),
                    None => r,
                }
            });
            return self.reply(client, r.finish(Some(&signer), false));
        }
        if let Some(redirect) = &self.draining {
            let r = match redirect.for_client(client.via) {
                Some((alt, domain)) => Reply::error(m, Code::TryAlternate).with(|r| {
                    let r = r.address(ATTR_ALTERNATE_SERVER, alt);
                    match domain {
                        // A name's bytes as they are (RFC 8489 §14.16).
                        Some(d) => r.bytes(ATTR_ALTERNATE_DOMAIN, d.as_bytes()),
                        None => r,
                    }
                }),
                None => Reply::error(m, Code::InsufficientCapacity),
            };
            return self.reply(client, r.finish(Some(&signer), false));
        }
        let tcp = match wire::requested_transport(m) {
            Some(Ok(PROTO_UDP)) => false,
            Some(Ok(super::PROTO_TCP)) => true,
            Some(Ok(_)) => return self.reply(client, err(Code::UnsupportedTransport)),
            None | Some(Err(())) => return self.reply(client, err(Code::BadRequest)),
        };
        // A TCP allocation (RFC 6062 §5.1) is for a client on a stream, and
        // has no use for EVEN-PORT, RESERVATION-TOKEN or DONT-FRAGMENT.
        if tcp
            && (!matches!(client.via, crate::addr::Via::Stream { .. })
                || [ATTR_EVEN_PORT, ATTR_RESERVATION_TOKEN, ATTR_DONT_FRAGMENT]
                    .into_iter()
                    .any(|t| wire::attr(m, t).is_some()))
        {
            return self.reply(client, err(Code::BadRequest));
        }
        let mobile = match self.wants_mobility(client, m) {
            Ok(mobile) => mobile,
            Err(code) => return self.reply(client, err(code)),
        };
        let Ok(mut families) = self.families(client, m) else {
            return self.reply(client, err(self.family_error(m)));
        };
        if tcp && families.dual {
            // One listening socket: one family.
            return self.reply(client, err(Code::BadRequest));
        }
        // EVEN-PORT (§14.6): the R bit asks to reserve the next port too.
        let (even, reserve) = match wire::attr(m, ATTR_EVEN_PORT) {
            None => (false, false),
            Some(v) if v.len() == 1 => (true, v[0] & 0x80 != 0),
            Some(_) => return self.reply(client, err(Code::BadRequest)),
        };
        let token = wire::attr(m, ATTR_RESERVATION_TOKEN);
        if token.is_some() && (even || families.dual) {
            return self.reply(client, err(Code::BadRequest));
        }
        let lifetime = match wire::u32_attr(m, ATTR_LIFETIME) {
            Some(Err(())) => return self.reply(client, err(Code::BadRequest)),
            Some(Ok(s)) => self.granted_lifetime(Some(s)),
            None => self.granted_lifetime(None),
        };
        // What this allocation counts against the quotas: one against the
        // user's name (a REST credential's name, not the whole username, so
        // that minting new credentials does not reset the count), and its
        // ports against the total. A reserved second port counts as one
        // more of each until it is redeemed or expires.
        let name = self.quota_name(&authed.username);
        let ports = if families.dual { 2 } else { 1 };
        let mut issued = None;
        let ((relay, port), held) = if let Some(t) = token {
            // A port another Allocate reserved (§7.2), of the relay address
            // and in the family it was reserved in, already counted: 508 if
            // unknown or gone.
            match self.cfg.shared.redeem(t, &authed.username) {
                Some((at, v6, held)) => {
                    families.v6 = v6;
                    (at, held)
                }
                None => return self.reply(client, err(Code::InsufficientCapacity)),
            }
        } else {
            let units = 1 + reserve as u32;
            if let Err(code) =
                self.cfg
                    .shared
                    .acquire(&name, units, ports + reserve as u32, &self.cfg.live.limits)
            {
                tracing::info!(target: LOG_TARGET, %client, user = %authed.username, code = code.value(), "allocation quota reached");
                self.stats.quota_rejections += 1;
                return self.reply(client, err(code));
            }
            // The reserved port's share, passed to the reservation.
            let reserved = reserve.then(|| Held {
                name: name.clone(),
                ports: 1,
            });
            let held = Held { name, ports };
            // A relay address with an IPv6 twin if an IPv6 relay is asked.
            let v6 = families.v6 || families.dual;
            let port = if let Some(one) = reserved.clone() {
                self.take_port_pair(v6).map(|(relay, (even, odd))| {
                    let t = self.next_token();
                    self.cfg
                        .shared
                        .reserve(t, (relay, odd), families.v6, &authed.username, one);
                    self.reserved
                        .push_back((now + Duration::from_secs(super::RESERVATION_SECS), t));
                    issued = Some(t);
                    (relay, even)
                })
            } else if families.dual {
                self.take_port(v6, even)
            } else {
                // A parked port first: its socket is still bound.
                self.take_parked(&authed.username, families.v6, even)
                    .or_else(|| self.take_port(v6, even))
            };
            let Some(port) = port else {
                tracing::warn!(target: LOG_TARGET, %client, even, free = self.free_ports(), "no free relay port");
                self.cfg.shared.release(&held);
                if let Some(one) = &reserved {
                    // The reservation, never made.
                    self.cfg.shared.release(one);
                }
                return self.reply(client, err(Code::InsufficientCapacity));
            };
            (port, held)
        };
        let id = match self.free_ids.pop() {
            Some(i) => AllocId(i),
            None => {
                self.allocs.push(None);
                AllocId(self.allocs.len() as u32 - 1)
            }
        };
        let relayed = SocketAddr::new(self.public_ip(relay, families.v6), port.0);
        self.allocs[id.0 as usize] = Some(Allocation {
            client,
            username: authed.username,
            held,
            signer,
            relay,
            port,
            relayed,
            extra: None,
            created: now,
            expires: capped(now + lifetime, authed.deadline),
            state: State::Opening {
                request: m.clone(),
                // A reserved port is the only one that will do.
                tries: if token.is_some() { BIND_TRIES } else { 1 },
                token: issued,
                dual: families.dual,
                v6_refused: families.v6_refused,
            },
            last_txid: m.transaction_id.0,
            last_response: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            held_channels: Vec::new(),
            scheduled: None,
            traffic: Default::default(),
            framed: Default::default(),
            serial: self.cfg.shared.next_serial(),
            usage_reported: Default::default(),
            meters: [Meter::new(now, &self.cfg.live.limits); Direction::COUNT],
            kernel_traffic: Default::default(),
            ticket: mobile.then_some(0),
            tcp: tcp.then(|| self.cfg.shared.peer_conns.new_owner()),
        });
        self.by_client.insert(client, id);
        let bind = SocketAddr::new(self.bind_ip(relay, families.v6), port.0);
        self.out.push_back(self.open_relay(id, bind));
    }

    /// The output that opens `id`'s relay socket at `bind`: a UDP socket,
    /// or a TCP listener for a TCP allocation (RFC 6062 §5.1).
    fn open_relay(&self, id: AllocId, bind: SocketAddr) -> Output {
        match self.allocation(id).and_then(|a| a.tcp) {
            Some(_) => Output::OpenTcpRelay { alloc: id, bind },
            None => Output::OpenRelay { alloc: id, bind },
        }
    }

    /// The relay families an Allocate asks for (§7.2): REQUESTED-ADDRESS-
    /// FAMILY, or ADDITIONAL-ADDRESS-FAMILY (IPv4 plus IPv6), or the
    /// configured default. `Err` when the request cannot be served; see
    /// [`Engine::family_error`] for the code.
    fn families(&self, client: ClientAddr, m: &Message) -> Result<Families, ()> {
        let v6_ok = self.cfg.relay_bind_v6.is_some();
        let additional = wire::attr(m, ATTR_ADDITIONAL_ADDRESS_FAMILY);
        match (wire::requested_family(m), additional) {
            (Some(_), Some(_)) => Err(()),
            (Some(Ok(0x01)), None) => Ok(Families::single(false)),
            (Some(Ok(0x02)), None) if v6_ok => Ok(Families::single(true)),
            (Some(_), None) => Err(()),
            (None, Some(v)) if v.len() == 4 && v[0] == 0x02 => Ok(Families {
                v6: false,
                dual: v6_ok,
                // Without IPv6 relays the IPv4 one is still given, with an
                // ADDRESS-ERROR-CODE 440 for IPv6 (§7.2).
                v6_refused: !v6_ok,
            }),
            (None, Some(_)) => Err(()),
            (None, None) => Ok(Families::single(
                self.cfg.same_family_default && client.remote.is_ipv6() && v6_ok,
            )),
        }
    }

    /// The error code for a request [`Engine::families`] refused: 400 when
    /// the attributes contradict each other or are malformed, else 440.
    fn family_error(&self, m: &Message) -> Code {
        let additional = wire::attr(m, ATTR_ADDITIONAL_ADDRESS_FAMILY);
        match (wire::requested_family(m), additional) {
            (Some(_), Some(_)) | (None, Some(_)) | (Some(Err(())), None) => Code::BadRequest,
            _ => Code::AddressFamilyNotSupported,
        }
    }

    /// Where a relay socket of `relay` binds, of the IPv6 twin if `v6`.
    pub(super) fn bind_ip(&self, relay: Relay, v6: bool) -> std::net::IpAddr {
        let r = self.relay_address(relay);
        match (v6, r.bind_v6) {
            (true, Some(ip)) => ip,
            _ => r.bind,
        }
    }

    /// What XOR-RELAYED-ADDRESS advertises for `relay`, of its IPv6 twin if `v6`.
    fn public_ip(&self, relay: Relay, v6: bool) -> std::net::IpAddr {
        let r = self.relay_address(relay);
        match (v6, r.public_v6) {
            (true, Some(ip)) => ip,
            _ => r.public,
        }
    }

    /// The shell reports whether the relay socket it was last asked to open
    /// for `id` is bound. When every relay of the allocation is open (two for
    /// a dual allocation) the Allocate is answered; a failed bind tries
    /// another port, and after [`BIND_TRIES`] the answer is 508 (§7.2).
    pub fn relay_opened(&mut self, now: Instant, id: AllocId, ok: bool) {
        let Some(a) = self.alloc_mut(id) else { return };
        let State::Opening {
            request,
            tries,
            token,
            dual,
            v6_refused,
        } = &a.state
        else {
            return;
        };
        let (request, tries, token, dual, v6_refused) =
            (request.clone(), *tries, *token, *dual, *v6_refused);
        let (client, signer, relay) = (a.client, a.signer, a.relay);
        // Which relay was being opened: the IPv6 one of a dual allocation
        // once it has been given a port, else the primary one.
        let extra = a.extra.is_some();
        if ok && dual && !extra {
            // The IPv4 relay is open; now the IPv6 one.
            match self.take_port_of(relay, false) {
                Some(port) => {
                    let relayed = SocketAddr::new(self.public_ip(relay, true), port.0);
                    let a = self.alloc_mut(id).expect("present");
                    a.extra = Some((port, relayed));
                    a.state = State::Opening {
                        request,
                        tries: 1,
                        token,
                        dual,
                        v6_refused,
                    };
                    let bind = SocketAddr::new(self.bind_ip(relay, true), port.0);
                    self.out.push_back(self.open_relay(id, bind));
                }
                None => self.fail_allocation(id, &request, &signer),
            }
            return;
        }
        if ok {
            let ticket = self.issue_ticket(id);
            let a = self.alloc_mut(id).expect("present");
            let lifetime = a.expires.saturating_duration_since(now).as_secs() as u32;
            let resp = Reply::success(&request).with(|mut resp| {
                resp = resp.xor_address(ATTR_XOR_RELAYED_ADDRESS, a.relayed);
                if let Some((_, v6)) = a.extra {
                    resp = resp.xor_address(ATTR_XOR_RELAYED_ADDRESS, v6);
                }
                if v6_refused {
                    resp = resp.address_error(0x02, Code::AddressFamilyNotSupported.value());
                }
                resp = resp
                    .u32(ATTR_LIFETIME, lifetime)
                    .xor_address(ATTR_XORMAPPED_ADDRESS, client.remote);
                if let Some(t) = token {
                    resp = resp.bytes(ATTR_RESERVATION_TOKEN, &t);
                }
                if let Some(t) = &ticket {
                    resp = resp.bytes(super::mobility::ATTR_MOBILITY_TICKET, t);
                }
                resp
            });
            let resp = resp.finish(Some(&signer), false);
            a.state = State::Active;
            a.last_response = resp.data.clone();
            let (relayed, extra) = (a.relayed, a.extra);
            tracing::info!(target: LOG_TARGET, %client, user = %a.username, relay = %a.relayed, extra = ?a.extra.map(|e| e.1), lifetime, "allocation created");
            self.stats.allocations_created += 1;
            self.parking.made(now);
            // Its relay ports are now reachable as peers of other clients.
            self.cfg
                .shared
                .set_live(relayed.is_ipv6(), relayed.port(), true);
            if let Some((_, r)) = extra {
                self.cfg.shared.set_live(r.is_ipv6(), r.port(), true);
            }
            self.reply(client, resp);
            self.reschedule(id, now);
            self.usage_fact(id, now, usage::Fact::Created { lifetime });
            return;
        }
        // That port is taken by someone else: try another, and put it back
        // in the pool. A retry cannot keep a reservation: the pair is
        // broken.
        if let Some(t) = token
            && let Some((r, p)) = self.cfg.shared.expire(&t)
        {
            self.release_port(r, p);
        }
        let even = !extra && wire::attr(&request, ATTR_EVEN_PORT).is_some();
        // Another port of the same relay address: a dual allocation's two
        // ports are of one.
        let next = if tries < BIND_TRIES {
            self.take_port_of(relay, even)
        } else {
            None
        };
        let Some(port) = next else {
            // Releases every port the allocation holds.
            return self.fail_allocation(id, &request, &signer);
        };
        let a = self.allocation(id).expect("present");
        let v6 = extra || a.relayed.is_ipv6();
        let old = if extra {
            a.extra.expect("extra").0
        } else {
            a.port
        };
        self.release_port(relay, old);
        let relayed = SocketAddr::new(self.public_ip(relay, v6), port.0);
        let a = self.alloc_mut(id).expect("present");
        if extra {
            a.extra = Some((port, relayed));
        } else {
            a.port = port;
            a.relayed = relayed;
        }
        a.state = State::Opening {
            request,
            tries: tries + 1,
            token: None,
            dual,
            v6_refused,
        };
        let bind = SocketAddr::new(self.bind_ip(relay, v6), port.0);
        self.out.push_back(self.open_relay(id, bind));
    }

    /// Give up on an allocation whose relay could not be opened: 508.
    fn fail_allocation(
        &mut self,
        id: AllocId,
        request: &Message,
        signer: &crate::proto::integrity::Signer,
    ) {
        let Some(a) = self.allocs[id.0 as usize].take() else {
            return;
        };
        tracing::warn!(target: LOG_TARGET, client = %a.client, "could not bind a relay socket");
        a.report_end(id, &mut self.out);
        self.cfg.shared.release(&a.held);
        self.release_port(a.relay, a.port);
        if let Some((p, _)) = a.extra {
            self.release_port(a.relay, p);
        }
        self.by_client.remove(&a.client);
        self.free_ids.push(id.0);
        // Closes whatever relay socket of it was already open.
        self.out.push_back(Output::CloseRelay { alloc: id });
        self.reply(
            a.client,
            Reply::error(request, Code::InsufficientCapacity).finish(Some(signer), false),
        );
    }

    /// An unpredictable RESERVATION-TOKEN: a keyed MAC of a counter, with
    /// the key from the engine's random seed.
    pub(super) fn next_token(&mut self) -> [u8; 8] {
        self.token_counter += 1;
        let tag = ring::hmac::sign(&self.token_key, &self.token_counter.to_be_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        out
    }

    /// Refresh request (§7.3): LIFETIME 0 deletes the allocation, anything
    /// else extends it.
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        id: AllocId,
        m: &Message,
        authed: &Authed,
    ) -> Answer {
        let signer = authed.signer;
        let err = |code: Code| authed.error(m, code);
        // REQUESTED-ADDRESS-FAMILY must name a family the allocation has (§7.3).
        if let Some(f) = wire::requested_family(m) {
            let a = self.allocation(id).expect("checked");
            let has = |v6: bool| {
                a.relayed.is_ipv6() == v6 || a.extra.is_some_and(|e| e.1.is_ipv6() == v6)
            };
            match f {
                Ok(0x01) if has(false) => {}
                Ok(0x02) if has(true) => {}
                _ => return err(Code::PeerAddressFamilyMismatch),
            }
        }
        let requested = match wire::u32_attr(m, ATTR_LIFETIME) {
            Some(Err(())) => return err(Code::BadRequest),
            Some(Ok(s)) => Some(s),
            None => None,
        };
        if requested == Some(0) {
            self.usage_fact(id, now, usage::Fact::Refreshed { lifetime: 0 });
            let a = self.allocation(id).expect("checked");
            tracing::info!(target: LOG_TARGET, client = %a.client, user = %a.username, "allocation deleted");
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
            return Reply::success(m)
                .with(|r| r.u32(ATTR_LIFETIME, 0))
                .finish(Some(&signer), false);
        }
        let lifetime = self.granted_lifetime(requested);
        let a = self.alloc_mut(id).expect("checked");
        a.expires = capped(now + lifetime, authed.deadline);
        let left = a.expires.saturating_duration_since(now).as_secs() as u32;
        self.reschedule(id, now);
        // Every Refresh answer of a mobile allocation carries a new ticket
        // (RFC 8016 §3.2).
        let ticket = self.issue_ticket(id);
        self.usage_fact(id, now, usage::Fact::Refreshed { lifetime: left });
        Reply::success(m)
            .with(|r| {
                let r = r.u32(ATTR_LIFETIME, left);
                match &ticket {
                    Some(t) => r.bytes(super::mobility::ATTR_MOBILITY_TICKET, t),
                    None => r,
                }
            })
            .finish(Some(&signer), false)
    }
}
