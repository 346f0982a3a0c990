//! Allocate and Refresh (RFC 8656 §7).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::message::Message;

use super::allocation::{Allocation, Counters, State};
use super::quota::Meter;
use super::{Authed, Engine, Output};
use crate::addr::{AllocId, ClientAddr};
use crate::proto::stun::{self as wire, Response};

/// UDP's protocol number, the only REQUESTED-TRANSPORT we relay (§7.2).
const PROTO_UDP: u8 = 17;
/// How many ports to try when binding one fails.
const BIND_TRIES: u8 = 8;

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
                .min(self.cfg.max_lifetime)
                .max(self.cfg.lifetime),
            None => self.cfg.lifetime,
        }
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
        let err = |code: u16| authed.error(m, code);
        if self.by_client.contains_key(&client) {
            self.reply(client, err(437));
            return;
        }
        if let Some(alternate) = self.draining {
            let r = match alternate {
                Some(alt) => Response::error(m, 300).address(ATTR_ALTERNATE_SERVER, alt),
                None => Response::error(m, 508),
            };
            return self.reply(client, r.finish(Some(&signer), false));
        }
        match wire::requested_transport(m) {
            Some(Ok(PROTO_UDP)) => {}
            Some(Ok(_)) => return self.reply(client, err(442)),
            None | Some(Err(())) => return self.reply(client, err(400)),
        }
        match wire::requested_family(m) {
            None | Some(Ok(0x01)) => {}
            Some(_) => return self.reply(client, err(440)),
        }
        // EVEN-PORT (§14.6): the R bit asks to reserve the next port too.
        let (even, reserve) = match wire::attr(m, ATTR_EVEN_PORT) {
            None => (false, false),
            Some(v) if v.len() == 1 => (true, v[0] & 0x80 != 0),
            Some(_) => return self.reply(client, err(400)),
        };
        let token = wire::attr(m, ATTR_RESERVATION_TOKEN);
        if token.is_some() && even {
            return self.reply(client, err(400));
        }
        let lifetime = match wire::u32_attr(m, ATTR_LIFETIME) {
            Some(Err(())) => return self.reply(client, err(400)),
            Some(Ok(s)) => self.granted_lifetime(Some(s)),
            None => self.granted_lifetime(None),
        };
        if let Err(code) = self.cfg.shared.acquire(&authed.username, &self.cfg.limits) {
            tracing::info!(%client, user = %authed.username, code, "allocation quota reached");
            self.stats.quota_rejections += 1;
            return self.reply(client, err(code));
        }
        let mut issued = None;
        let port = if let Some(t) = token {
            // A port another Allocate reserved (§7.2): 508 if unknown or gone.
            self.cfg.shared.redeem(t)
        } else if reserve {
            self.ports.take_pair().map(|(even, odd)| {
                let t = self.next_token();
                self.cfg.shared.reserve(t, odd);
                self.reserved
                    .push_back((now + Duration::from_secs(super::RESERVATION_SECS), t));
                issued = Some(t);
                even
            })
        } else {
            self.ports.take(even)
        };
        let Some(port) = port else {
            tracing::warn!(%client, even, free = self.ports.len(), "no free relay port");
            self.cfg.shared.release(&authed.username);
            return self.reply(client, err(508));
        };
        let id = match self.free_ids.pop() {
            Some(i) => AllocId(i),
            None => {
                self.allocs.push(None);
                AllocId(self.allocs.len() as u32 - 1)
            }
        };
        let relayed = SocketAddr::new(self.cfg.relay_public, port.0);
        self.allocs[id.0 as usize] = Some(Allocation {
            client,
            username: authed.username,
            signer,
            port,
            relayed,
            created: now,
            expires: capped(now + lifetime, authed.deadline),
            state: State::Opening {
                request: m.clone(),
                // A reserved port is the only one that will do.
                tries: if token.is_some() { BIND_TRIES } else { 1 },
                token: issued,
            },
            last_txid: m.transaction_id.0,
            last_response: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            scheduled: None,
            counters: Counters::default(),
            to_peer_meter: Meter::new(now, &self.cfg.limits),
            to_client_meter: Meter::new(now, &self.cfg.limits),
        });
        self.by_client.insert(client, id);
        self.out.push_back(Output::OpenRelay {
            alloc: id,
            bind: SocketAddr::new(self.cfg.relay_bind, port.0),
        });
    }

    /// The shell reports whether the relay socket for `id` is bound. On
    /// success the Allocate is answered; on failure another port is tried,
    /// and after [`BIND_TRIES`] the answer is 508 (§7.2).
    pub fn relay_opened(&mut self, now: Instant, id: AllocId, ok: bool) {
        let Some(a) = self.alloc_mut(id) else { return };
        let State::Opening {
            request,
            tries,
            token,
        } = &a.state
        else {
            return;
        };
        let (request, tries, token) = (request.clone(), *tries, *token);
        let client = a.client;
        let signer = a.signer;
        if ok {
            let lifetime = a.expires.saturating_duration_since(now).as_secs() as u32;
            let mut resp = Response::success(&request)
                .xor_address(ATTR_XOR_RELAYED_ADDRESS, a.relayed)
                .u32(ATTR_LIFETIME, lifetime)
                .xor_address(ATTR_XORMAPPED_ADDRESS, client.remote);
            if let Some(t) = token {
                resp = resp.bytes(ATTR_RESERVATION_TOKEN, &t);
            }
            let resp = resp.finish(Some(&signer), false);
            a.state = State::Active;
            a.last_response = resp.clone();
            tracing::info!(%client, user = %a.username, relay = %a.relayed, lifetime, "allocation created");
            self.stats.allocations_created += 1;
            self.reply(client, resp);
            self.reschedule(id, now);
            return;
        }
        // That port is taken by someone else: put it at the back, try another.
        let old = a.port;
        self.ports.release(old);
        // A retry cannot keep a reservation: the pair is broken.
        if let Some(t) = token {
            if let Some(p) = self.cfg.shared.redeem(&t) {
                self.ports.release(p);
            }
        }
        let even = wire::attr(&request, ATTR_EVEN_PORT).is_some();
        let next = if tries < BIND_TRIES {
            self.ports.take(even)
        } else {
            None
        };
        match next {
            Some(port) => {
                let a = self.alloc_mut(id).expect("present");
                a.port = port;
                a.relayed.set_port(port.0);
                a.state = State::Opening {
                    request,
                    tries: tries + 1,
                    token: None,
                };
                let bind = SocketAddr::new(self.cfg.relay_bind, port.0);
                self.out.push_back(Output::OpenRelay { alloc: id, bind });
            }
            None => {
                tracing::warn!(%client, "could not bind a relay socket");
                if let Some(a) = self.allocs[id.0 as usize].take() {
                    self.cfg.shared.release(&a.username);
                }
                self.by_client.remove(&client);
                self.free_ids.push(id.0);
                self.reply(
                    client,
                    Response::error(&request, 508).finish(Some(&signer), false),
                );
            }
        }
    }

    /// An unguessable-enough RESERVATION-TOKEN (it only names a port that
    /// the redeeming client must still authenticate for).
    fn next_token(&mut self) -> [u8; 8] {
        let t = self.next_txid();
        let mut out = [0u8; 8];
        out.copy_from_slice(&t[..8]);
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
    ) -> Vec<u8> {
        let signer = authed.signer;
        let err = |code: u16| authed.error(m, code);
        match wire::requested_family(m) {
            None | Some(Ok(0x01)) => {}
            Some(_) => return err(443),
        }
        let requested = match wire::u32_attr(m, ATTR_LIFETIME) {
            Some(Err(())) => return err(400),
            Some(Ok(s)) => Some(s),
            None => None,
        };
        if requested == Some(0) {
            let a = self.allocation(id).expect("checked");
            tracing::info!(client = %a.client, user = %a.username, "allocation deleted");
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
            return Response::success(m)
                .u32(ATTR_LIFETIME, 0)
                .finish(Some(&signer), false);
        }
        let lifetime = self.granted_lifetime(requested);
        let a = self.alloc_mut(id).expect("checked");
        a.expires = capped(now + lifetime, authed.deadline);
        let left = a.expires.saturating_duration_since(now).as_secs() as u32;
        self.reschedule(id, now);
        Response::success(m)
            .u32(ATTR_LIFETIME, left)
            .finish(Some(&signer), false)
    }
}
