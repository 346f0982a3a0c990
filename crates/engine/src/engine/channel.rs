//! ChannelBind (RFC 8656 §12.2) and ChannelData from clients (§12.6).

use std::time::{Duration, Instant};

use stun::message::Message;

use super::allocation::{CHANNEL_HOLD_SECS, Change, Channel};
use super::stats::{Code, Direction, Transport};
use super::{Answer, Authed, Engine, ToPeer};
use crate::addr::{AllocId, ChannelNumber, ClientAddr, PeerAddr};
use crate::proto::channel_data;
use crate::proto::stun as wire;

/// The target of this module's log lines (see [`super::LOG_TARGET`]).
const LOG_TARGET: &str = "ferroturn::engine::channel";

impl Engine {
    /// ChannelBind request (§12.2): number in 0x4000–0x4FFF, one peer; a
    /// number already bound to another peer, or a peer already bound to
    /// another number, is a 400. Binding also installs or refreshes the
    /// permission for the peer's IP (§12.2), reported before the channel.
    /// For 5 minutes after a binding expires (§12), its number binds to no
    /// other peer and its peer to no other number (400); binding the same
    /// pair again is allowed and makes a new binding, reported as
    /// [`Change::Created`]: the expired one was unbound and reported as
    /// [`Change::Expired`], and a mirror pairs each end with a start. Only
    /// expiry puts a binding on hold: one removed with its allocation, or
    /// by a reload that denies its peer, frees its number at once.
    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        id: AllocId,
        m: &Message,
        authed: &Authed,
    ) -> Answer {
        let err = |code: Code| authed.error(m, code);
        let Some(Ok(n)) = wire::channel_number(m) else {
            return err(Code::BadRequest);
        };
        let number = if self.cfg.live.legacy_channels {
            ChannelNumber::new_legacy(n)
        } else {
            ChannelNumber::new(n)
        };
        let Some(number) = number else {
            tracing::debug!(target: LOG_TARGET, channel = n, "channel number outside the allowed range");
            return err(Code::BadRequest);
        };
        let peer = match wire::xor_peer_addresses(m) {
            Ok(p) if p.len() == 1 => PeerAddr(p[0]),
            _ => return err(Code::BadRequest),
        };
        if let Err(code) = self.check_peer(id, peer) {
            return err(code);
        }
        let max = self.cfg.live.limits.channels_per_allocation as usize;
        let a = self.allocs[id.0 as usize].as_mut().expect("checked");
        // Only live bindings conflict or get refreshed (§12.2: "currently
        // bound"), and what expired is reported before what this binds.
        a.sweep(id, now, &mut self.out);
        if a.held_channels.iter().any(|h| h.forbids(number, peer, now)) {
            tracing::debug!(target: LOG_TARGET, channel = n, %peer, "channel or peer on hold after its binding expired");
            return err(Code::BadRequest);
        }
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        let change = match (by_number, by_peer) {
            (Some(i), Some(j)) if i == j => Change::Refreshed,
            (None, None) if a.channels.len() >= max => {
                // A quota: 508 (RFC 8656 §12.2).
                self.stats.quota_rejections += 1;
                return err(Code::InsufficientCapacity);
            }
            (None, None) => Change::Created,
            _ => {
                tracing::debug!(target: LOG_TARGET, channel = n, %peer, "channel or peer already bound otherwise");
                return err(Code::BadRequest);
            }
        };
        let owner = a.owner(id);
        let reach = self.cfg.live.policy.reach(peer.0.ip());
        let permission_expires = now + self.cfg.live.permission_lifetime;
        a.permit(
            &owner,
            peer.0.ip(),
            permission_expires,
            reach,
            &mut self.out,
        );
        let channel = Channel {
            number,
            peer,
            expires: now + self.cfg.live.channel_lifetime,
            hold: Duration::from_secs(CHANNEL_HOLD_SECS).min(self.cfg.live.channel_lifetime),
        };
        match by_number {
            Some(i) => a.channels[i] = channel,
            None => {
                // A held pair bound again is live, no longer on hold.
                a.held_channels
                    .retain(|h| h.number != number || h.peer != peer);
                a.channels.push(channel);
            }
        }
        self.out.push_back(owner.channel(&channel, change));
        self.reschedule(id, now);
        authed.ok(m)
    }

    /// ChannelData from a client (§12.6): relayed to the bound peer if the
    /// channel and a permission are live and the allocation's ceilings
    /// allow; otherwise dropped. This is the hot path: no allocation, no
    /// STUN parsing.
    #[inline]
    pub(super) fn channel_data_from_client(
        &mut self,
        now: Instant,
        client: ClientAddr,
        packet: &[u8],
    ) -> Option<ToPeer> {
        let reaches = super::reaches(&self.cfg);
        let found = channel_data::parse(packet).and_then(|h| {
            let id = *self.by_client.get(&client)?;
            let a = self.allocs[id.0 as usize].as_mut()?;
            let peer = a.channel_by_number(h.channel, now)?.peer;
            a.permits(peer.0, now, &reaches)
                .then_some((id, a, peer, h.len))
        });
        let Some((id, a, peer, len)) = found else {
            self.stats.dropped += 1;
            return None;
        };
        if !a.admit(now, Direction::ToPeer, len, &self.cfg.live.limits) {
            self.stats.rate_limited += 1;
            return None;
        }
        a.framed(Direction::ToPeer, packet.len());
        self.stats
            .traffic(Direction::ToPeer, Transport::of(client.via))
            .add(len);
        Some(ToPeer {
            relay: id,
            peer,
            start: 4,
            end: 4 + len,
        })
    }
}
