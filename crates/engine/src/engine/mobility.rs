//! Mobility with TURN (RFC 8016): MOBILITY-TICKET on Allocate and Refresh,
//! and a Refresh from a new 5-tuple that moves an allocation there.
//!
//! A ticket is opaque to the client. Ours is 24 bytes, sent as 32
//! characters of URL-safe base64 (coturn's `turnutils_uclient -M` keeps a
//! ticket as a C string of at most 32 bytes): the UDP shard that owns the
//! allocation, its id, a serial that changes with every ticket issued, the
//! allocation's expiry (Unix seconds), 3 bytes of SHA-256 of the owner's
//! username, and 8 bytes of HMAC-SHA256, with a key drawn at random once
//! per process ([`EngineConfig::ticket_key`](super::EngineConfig)), over
//! all of that and the whole username. Only the newest ticket of an
//! allocation moves it (its serial), so a ticket that was used or
//! superseded is worth nothing, whoever replays it.
//!
//! The engine that receives the Refresh checks the ticket and the user
//! (long-term credential, RFC 8489 §9.2); when another engine owns the
//! allocation it queues an [`Output::Handoff`] for the shell, which takes
//! it to the owner ([`Engine::surrender`]), which hands the allocation back
//! ([`Moving`]) with its relay sockets for [`Engine::adopt`]. From then on
//! the allocation lives where the kernel hashes the client's new 5-tuple.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use stun::attributes::AttrType;
use stun::message::Message;

use super::allocation::{Allocation, Change, State};
use super::stats::Code;
use super::{Authed, Engine, Output, Reply};
use crate::addr::{AllocId, ClientAddr, Via};
use crate::proto::integrity::Signer;
use crate::proto::stun as wire;

/// The target of this module's log lines (see [`super::LOG_TARGET`]).
const LOG_TARGET: &str = "ferroturn::engine::mobility";

/// MOBILITY-TICKET (RFC 8016 §3.4), comprehension-optional.
pub const ATTR_MOBILITY_TICKET: AttrType = AttrType(0x8030);

/// Shard, id, serial, expiry, user digest.
const BODY_LEN: usize = 1 + 4 + 4 + 4 + 3;
/// Bytes of HMAC-SHA256 kept.
const TAG_LEN: usize = 8;
/// The ticket's bytes before base64.
const RAW_LEN: usize = BODY_LEN + TAG_LEN;

/// How long a Refresh that went to another engine holds back the
/// retransmissions of its client: the owner's answer comes meanwhile.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);
/// At most this many moves in flight from one engine; more are dropped
/// unanswered (the client retransmits).
const MAX_HANDOFFS: usize = 256;

/// What a ticket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    shard: u8,
    id: u32,
    serial: u32,
    expiry: u32,
    user: [u8; 3],
}

/// Why a ticket does not verify for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsealed {
    /// Not a ticket of ours, or altered: 400.
    Invalid,
    /// Ours, but its digest names another user: 441.
    OtherUser,
}

/// The first 3 bytes of SHA-256 of a username: how a ticket tells a
/// Refresh of another user (441) from a forgery (400). The tag, over the
/// whole name, is what binds it.
fn user_digest(name: &str) -> [u8; 3] {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    [d.as_ref()[0], d.as_ref()[1], d.as_ref()[2]]
}

impl Ticket {
    fn body(&self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0] = self.shard;
        b[1..5].copy_from_slice(&self.id.to_be_bytes());
        b[5..9].copy_from_slice(&self.serial.to_be_bytes());
        b[9..13].copy_from_slice(&self.expiry.to_be_bytes());
        b[13..16].copy_from_slice(&self.user);
        b
    }

    /// The tag of `body` for `user`.
    fn tag(key: &ring::hmac::Key, body: &[u8], user: &str) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(key);
        ctx.update(body);
        ctx.update(user.as_bytes());
        ctx.sign()
    }

    /// The ticket as sent, for `user`.
    fn seal(&self, key: &ring::hmac::Key, user: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body = self.body();
        let mut raw = [0u8; RAW_LEN];
        raw[..BODY_LEN].copy_from_slice(&body);
        raw[BODY_LEN..].copy_from_slice(&Self::tag(key, &body, user).as_ref()[..TAG_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(raw)
            .into_bytes()
    }

    /// The ticket in `text` if its tag verifies under `key` for `user`.
    fn open(text: &[u8], key: &ring::hmac::Key, user: &str) -> Result<Ticket, Unsealed> {
        use base64::Engine as _;
        use subtle::ConstantTimeEq;
        let mut raw = [0u8; RAW_LEN];
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(text, &mut raw);
        if decoded != Ok(RAW_LEN) {
            return Err(Unsealed::Invalid);
        }
        let (body, tag) = raw.split_at(BODY_LEN);
        let u32_at = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let t = Ticket {
            shard: body[0],
            id: u32_at(1),
            serial: u32_at(5),
            expiry: u32_at(9),
            user: [body[13], body[14], body[15]],
        };
        let good = Self::tag(key, body, user).as_ref()[..TAG_LEN].ct_eq(tag);
        match (bool::from(good), t.user == user_digest(user)) {
            (true, _) => Ok(t),
            (false, true) => Err(Unsealed::Invalid),
            (false, false) => Err(Unsealed::OtherUser),
        }
    }
}

/// A Refresh with a valid ticket for an allocation another engine owns:
/// the shell takes it to engine `owner` ([`Engine::surrender`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The engine (UDP shard index) that owns the allocation.
    pub owner: u16,
    /// The engine the Refresh came to, where the allocation goes.
    pub from: u16,
    id: AllocId,
    serial: u32,
    /// The client's new 5-tuple.
    client: ClientAddr,
    username: String,
    /// The Refresh request, as it came.
    request: Vec<u8>,
    signer: Signer,
    deadline: Option<Instant>,
}

/// An allocation on its way from its owner to the engine of its client's
/// new 5-tuple ([`Engine::adopt`]); the shell moves its relay sockets
/// with it.
#[derive(Debug)]
pub struct Moving {
    alloc: Allocation,
    handoff: Box<Handoff>,
    /// Its id at the engine it left, whose relay sockets the shell takes.
    pub old_id: AllocId,
}

impl Handoff {
    /// The client's new 5-tuple.
    pub fn client(&self) -> ClientAddr {
        self.client
    }
}

impl Moving {
    /// The engine it goes to.
    pub fn to(&self) -> u16 {
        self.handoff.from
    }
}

/// Moves this engine sent to another and awaits, so that a client's
/// retransmissions do not start a second one: each is answered (with the
/// move's answer) once the allocation arrives, as a retransmission to an
/// allocation is (RFC 8489 §6.3.1).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Until when, for which new 5-tuple, and how many retransmissions
    /// came meanwhile (at most [`MAX_REPEATS`]).
    moves: VecDeque<(Instant, ClientAddr, u8)>,
}

/// Retransmissions of a move answered at most, once it is done.
const MAX_REPEATS: u8 = 3;

impl Pending {
    fn prune(&mut self, now: Instant) {
        while self.moves.front().is_some_and(|(t, ..)| *t <= now) {
            self.moves.pop_front();
        }
    }

    /// Whether a move for `client` is under way; counts this request as a
    /// retransmission if so.
    fn waiting(&mut self, now: Instant, client: ClientAddr) -> bool {
        self.prune(now);
        match self.moves.iter_mut().find(|(_, c, _)| *c == client) {
            Some((_, _, n)) => {
                *n = (*n + 1).min(MAX_REPEATS);
                true
            }
            None => false,
        }
    }

    /// The move for `client` is over; how many retransmissions it had.
    fn done(&mut self, client: ClientAddr) -> u8 {
        let n = self
            .moves
            .iter()
            .find(|(_, c, _)| *c == client)
            .map_or(0, |m| m.2);
        self.moves.retain(|(_, c, _)| *c != client);
        n
    }
}

impl Engine {
    /// Whether an Allocate asks for mobility (RFC 8016 §3.1): an empty
    /// MOBILITY-TICKET. `Err` with the code to refuse it: 405 when
    /// `[allocation] mobility` is off or the client is on a stream (a TCP or
    /// TLS allocation ends with its connection, RFC 8656 §3.1, so there
    /// is nothing to move), 400 when the attribute is not empty.
    pub(super) fn wants_mobility(&self, client: ClientAddr, m: &Message) -> Result<bool, Code> {
        match wire::attr(m, ATTR_MOBILITY_TICKET) {
            None => Ok(false),
            Some(_) if !self.cfg.live.mobility || !matches!(client.via, Via::Udp(_)) => {
                Err(Code::MobilityForbidden)
            }
            Some([]) => Ok(true),
            Some(_) => Err(Code::BadRequest),
        }
    }

    /// A fresh ticket for allocation `id`, if it asked for mobility; older
    /// tickets of it stop working.
    pub(super) fn issue_ticket(&mut self, id: AllocId) -> Option<Vec<u8>> {
        // Only UDP shards (at most 256) issue tickets, and none once a
        // reload turned mobility off.
        if !self.cfg.live.mobility {
            return None;
        }
        let shard = u8::try_from(self.cfg.shard).ok()?;
        let a = self.allocation(id)?;
        a.ticket?;
        // A ticket lives no longer than its allocation, nor past 2106.
        let expiry = u32::try_from(self.unix(a.expires)).unwrap_or(u32::MAX);
        let user = a.username.clone();
        self.ticket_serial = self.ticket_serial.wrapping_add(1);
        let serial = self.ticket_serial;
        self.alloc_mut(id).expect("present").ticket = Some(serial);
        let t = Ticket {
            shard,
            id: id.0,
            serial,
            expiry,
            user: user_digest(&user),
        };
        Some(t.seal(&self.ticket_key, &user))
    }

    /// A Refresh with MOBILITY-TICKET from a 5-tuple that holds no
    /// allocation here (RFC 8016 §3.2), after authentication: 405 when
    /// mobility is off or the client is on a stream, 400 for a ticket that
    /// is not ours or was altered, 441 when it names another user, 437
    /// when its allocation is gone or the ticket was superseded (checked
    /// by the owner). Otherwise the allocation moves to `client`.
    pub(super) fn mobility_refresh(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
        authed: Authed,
    ) {
        let err = |code: Code| authed.error(m, code);
        if !self.cfg.live.mobility || !matches!(client.via, Via::Udp(_)) {
            return self.reply(client, err(Code::MobilityForbidden));
        }
        if self.handoffs.waiting(now, client) {
            // A retransmission while its move is under way.
            return;
        }
        let text = wire::attr(m, ATTR_MOBILITY_TICKET).unwrap_or_default();
        let t = match Ticket::open(text, &self.ticket_key, &authed.username) {
            Ok(t) => t,
            Err(Unsealed::Invalid) => {
                tracing::info!(target: LOG_TARGET, %client, user = %authed.username, "invalid mobility ticket");
                return self.reply(client, err(Code::BadRequest));
            }
            Err(Unsealed::OtherUser) => {
                tracing::info!(target: LOG_TARGET, %client, user = %authed.username, "mobility ticket of another user");
                return self.reply(client, err(Code::WrongCredentials));
            }
        };
        if u64::from(t.expiry) <= self.unix(now) {
            return self.reply(client, err(Code::AllocationMismatch));
        }
        let h = Box::new(Handoff {
            owner: t.shard.into(),
            from: self.cfg.shard,
            id: AllocId(t.id),
            serial: t.serial,
            client,
            username: authed.username,
            request: m.raw.clone(),
            signer: authed.signer,
            deadline: authed.deadline,
        });
        if u16::from(t.shard) == self.cfg.shard {
            return self.move_here(now, h);
        }
        if self.handoffs.moves.len() >= MAX_HANDOFFS {
            return;
        }
        self.handoffs
            .moves
            .push_back((now + HANDOFF_WAIT, client, 0));
        self.out.push_back(Output::Handoff(h));
    }

    /// Whether the move `h` may take allocation `h.id` of this engine: it
    /// is active, of the same user, and `h`'s ticket is its newest one.
    fn movable(&self, now: Instant, h: &Handoff) -> bool {
        self.allocation(h.id).is_some_and(|a| {
            matches!(a.state, State::Active)
                && a.ticket == Some(h.serial)
                && a.username == h.username
                && a.expires > now
        }) && !self.by_client.contains_key(&h.client)
    }

    /// Refuse move `h` with 437: its allocation is gone or its ticket
    /// superseded. Sent from this engine's own socket of the listener the
    /// request came to: the same address and port.
    fn refuse_move(&mut self, h: &Handoff) {
        let Ok(m) = wire::parse(&h.request) else {
            return;
        };
        tracing::info!(target: LOG_TARGET, client = %h.client, user = %h.username, "mobility ticket of no live allocation");
        let answer = Reply::error(&m, Code::AllocationMismatch).finish(Some(&h.signer), false);
        self.reply(h.client, answer);
    }

    /// Move an allocation of this engine to another 5-tuple of its own.
    fn move_here(&mut self, now: Instant, h: Box<Handoff>) {
        if !self.movable(now, &h) {
            return self.refuse_move(&h);
        }
        let id = h.id;
        let a = self.allocs[id.0 as usize].as_mut().expect("movable");
        a.report_end(id, &mut self.out);
        let old = std::mem::replace(&mut a.client, h.client);
        self.by_client.remove(&old);
        self.by_client.insert(h.client, id);
        tracing::info!(target: LOG_TARGET, from = %old, to = %h.client, user = %h.username, "allocation moved");
        self.moved_in(now, id, &h);
    }

    /// Give allocation `h.id` up to the engine `h.from`, where its client's
    /// new 5-tuple arrives (RFC 8016 §3.2); `None` when the move is
    /// refused (answered here with 437). Its ports, quota and live relay
    /// ports stay held: they go with it. The shell must take its relay
    /// sockets ([`Moving::old_id`]) before this engine makes another
    /// allocation.
    pub fn surrender(&mut self, now: Instant, h: Box<Handoff>) -> Option<Moving> {
        if !self.movable(now, &h) {
            self.refuse_move(&h);
            return None;
        }
        let id = h.id;
        let a = self.allocs[id.0 as usize].take().expect("movable");
        a.report_end(id, &mut self.out);
        self.by_client.remove(&a.client);
        self.free_ids.push(id.0);
        tracing::info!(target: LOG_TARGET, from = %a.client, to = %h.client, user = %a.username, shard = h.from, "allocation handed to another shard");
        Some(Moving {
            alloc: a,
            handoff: h,
            old_id: id,
        })
    }

    /// Take an allocation another engine gave up ([`Engine::surrender`])
    /// for its client's new 5-tuple, and answer the Refresh that moved it.
    /// Returns its id here, under which the shell keeps its relay sockets.
    pub fn adopt(&mut self, now: Instant, moving: Moving) -> AllocId {
        let Moving {
            mut alloc, handoff, ..
        } = moving;
        let repeats = self.handoffs.done(handoff.client);
        let id = match self.free_ids.pop() {
            Some(i) => AllocId(i),
            None => {
                self.allocs.push(None);
                AllocId(self.allocs.len() as u32 - 1)
            }
        };
        alloc.client = handoff.client;
        alloc.scheduled = None;
        self.allocs[id.0 as usize] = Some(alloc);
        if self.by_client.contains_key(&handoff.client) {
            // The new 5-tuple allocated meanwhile: this one cannot live
            // there, and ends (its sockets are closed once the shell has
            // them).
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
            self.refuse_move(&handoff);
            return id;
        }
        self.by_client.insert(handoff.client, id);
        self.moved_in(now, id, &handoff);
        // The retransmissions that came meanwhile get the same answer.
        if let Some(a) = self.allocs[id.0 as usize].as_ref() {
            for _ in 0..repeats {
                let data = a.last_response.clone();
                self.out.push_back(Output::Transmit {
                    to: handoff.client,
                    data,
                });
            }
        }
        id
    }

    /// An allocation now at `h.client`: report its permissions and
    /// channels anew (a fast path follows the move), then answer the
    /// Refresh as any other, with a new ticket.
    fn moved_in(&mut self, now: Instant, id: AllocId, h: &Handoff) {
        self.stats.mobility_moves += 1;
        let a = self.allocs[id.0 as usize].as_ref().expect("present");
        let owner = a.owner(id);
        for p in &a.permissions {
            self.out.push_back(owner.permission(p, Change::Created));
        }
        for c in &a.channels {
            self.out.push_back(owner.channel(c, Change::Created));
        }
        let Ok(m) = wire::parse(&h.request) else {
            return;
        };
        let authed = Authed {
            username: h.username.clone(),
            signer: h.signer,
            deadline: h.deadline,
        };
        let answer = self.refresh(now, id, &m, &authed);
        if let Some(a) = self.alloc_mut(id) {
            a.last_txid = m.transaction_id.0;
            a.last_response = answer.data.clone();
        }
        self.reply(h.client, answer);
    }
}
