//! CreatePermission (RFC 8656 §9) and Send indications (§11.2).

use std::time::{Duration, Instant};

use stun::attributes::ATTR_DATA;
use stun::message::Message;

use super::stats::{Code, Direction, Transport};
use super::{Answer, Authed, Engine, ToPeer};
use crate::addr::{AllocId, ClientAddr, PeerAddr};
use crate::proto::stun as wire;

/// The target of this module's log lines (see [`super::LOG_TARGET`]).
const LOG_TARGET: &str = "ferroturn::engine::permission";

impl Engine {
    /// Check a peer for this allocation: allowed by the peer policy (403),
    /// then of the relay's address family (443, §9.2). The policy comes
    /// first, so that every denied form, IPv6 ones included, reads as 403.
    pub(super) fn check_peer(&mut self, id: AllocId, peer: PeerAddr) -> Result<(), Code> {
        let a = self.allocation(id).expect("checked");
        let shared = &self.cfg.shared;
        if let Err(d) = self.cfg.live.policy.check(peer.0, |r| shared.is_live(r)) {
            tracing::info!(target: LOG_TARGET, client = %a.client, %peer, rule = %d, "peer denied");
            self.stats.policy_denials += 1;
            return Err(Code::Forbidden);
        }
        if !a.serves_family(peer.0) {
            return Err(Code::PeerAddressFamilyMismatch);
        }
        Ok(())
    }

    /// CreatePermission request (§9.2): every XOR-PEER-ADDRESS is checked,
    /// then all are installed (or refreshed) for 300 s; one bad peer fails
    /// the whole request and installs nothing. Each IP is reported once,
    /// however many of the peers share it.
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        id: AllocId,
        m: &Message,
        authed: &Authed,
    ) -> Answer {
        let err = |code: Code| authed.error(m, code);
        let peers = match wire::xor_peer_addresses(m) {
            Ok(p) if !p.is_empty() => p,
            _ => return err(Code::BadRequest),
        };
        for p in &peers {
            if let Err(code) = self.check_peer(id, PeerAddr(*p)) {
                return err(code);
            }
        }
        let max = self.cfg.live.limits.permissions_per_allocation as usize;
        let policy = &self.cfg.live.policy;
        let a = self.allocs[id.0 as usize].as_mut().expect("checked");
        // What expired is gone before anything is counted or refreshed, so
        // that a permission asked again after its expiry is a new one.
        a.sweep(id, now, &mut self.out);
        let mut new: Vec<_> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !a.permissions.iter().any(|q| q.ip == *ip))
            .collect();
        new.sort_unstable();
        new.dedup();
        if a.permissions.len() + new.len() > max {
            // A quota: 508 (RFC 8656 §9.2).
            self.stats.quota_rejections += 1;
            return err(Code::InsufficientCapacity);
        }
        let expires = now + self.cfg.live.permission_lifetime;
        let owner = a.owner(id);
        for (i, p) in peers.iter().enumerate() {
            let ip = p.ip();
            if peers[..i].iter().all(|q| q.ip() != ip) {
                a.permit(&owner, ip, expires, policy.reach(ip), &mut self.out);
            }
        }
        self.reschedule(id, now);
        authed.ok(m)
    }

    /// Send indication (§11.2): relay DATA to the XOR-PEER-ADDRESS if a
    /// permission covers it and the allocation's ceilings allow; otherwise
    /// drop silently (an indication gets no answer). A Send to a peer the
    /// policy denies is counted as a denial, whatever permission exists.
    pub(super) fn send_indication(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
    ) -> Option<ToPeer> {
        let Some(&id) = self.by_client.get(&client) else {
            self.stats.dropped += 1;
            return None;
        };
        let peer = wire::xor_peer_addresses(m).ok()?.into_iter().next();
        let data = wire::attr_range(m, ATTR_DATA);
        let limits = self.cfg.live.limits;
        let reaches = super::reaches(&self.cfg);
        let (policy, shared) = (&self.cfg.live.policy, &self.cfg.shared);
        let a = self.allocs.get_mut(id.0 as usize)?.as_mut()?;
        // No Send on a TCP allocation (RFC 6062 §5.1): an indication gets
        // no answer, so it is dropped.
        let (Some(peer), Some((start, end)), None) = (peer, data, a.tcp) else {
            self.stats.dropped += 1;
            return None;
        };
        // A permission is for an IP; on this host's own addresses the port
        // decides too (a live relay port, never a listener), so the policy
        // is asked again for this destination.
        if !a.permits(peer, now, reaches) {
            self.stats.dropped += 1;
            if let Err(d) = policy.check(peer, |r| shared.is_live(r)) {
                self.stats.policy_denials += 1;
                // Logged at info like every denial, but at most once a
                // second: a client must not be able to flood the log.
                if self
                    .send_denial_logged
                    .is_none_or(|t| now >= t + Duration::from_secs(1))
                {
                    self.send_denial_logged = Some(now);
                    tracing::info!(target: LOG_TARGET, %client, %peer, rule = %d, "peer denied (Send indication)");
                }
            }
            return None;
        }
        if !a.admit(now, Direction::ToPeer, end - start, &limits) {
            self.stats.rate_limited += 1;
            return None;
        }
        a.framed(Direction::ToPeer, m.raw.len());
        self.stats
            .traffic(Direction::ToPeer, Transport::of(client.via))
            .add(end - start);
        Some(ToPeer {
            relay: id,
            peer: PeerAddr(peer),
            start,
            end,
        })
    }
}
