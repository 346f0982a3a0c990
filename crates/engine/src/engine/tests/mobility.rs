//! Mobility (RFC 8016): tickets on Allocate and Refresh, moves within one
//! engine and between two (as between UDP shards), and every refusal.

use super::*;
use crate::engine::mobility::ATTR_MOBILITY_TICKET;

fn mobile_config() -> EngineConfig {
    let mut cfg = config((50000..50010).collect());
    cfg.live.mobility = true;
    cfg.ticket_key = [7; 32];
    cfg
}

impl T {
    /// Allocate for `c` asking for mobility; the ticket.
    fn allocate_mobile(&mut self, c: ClientAddr) -> Vec<u8> {
        let r = self.signed(
            c,
            Req::new(METHOD_ALLOCATE)
                .transport(17)
                .attr(ATTR_MOBILITY_TICKET, &[]),
        );
        assert_eq!(code(&r), None, "allocate failed");
        wire::attr(&r, ATTR_MOBILITY_TICKET)
            .expect("a ticket")
            .to_vec()
    }

    /// A Refresh from `c` carrying `ticket`, signed as `user`.
    fn refresh_with(&mut self, c: ClientAddr, ticket: &[u8], user: (&str, &str)) -> Vec<Message> {
        let n = self.nonce_for(c);
        let req = Req::new(METHOD_REFRESH).attr(ATTR_MOBILITY_TICKET, ticket);
        self.send(c, &req.sign_as(user.0, user.1, &n))
    }

    /// ChannelData on 0x4000 from `c`: whether it goes to a peer.
    fn relays(&mut self, c: ClientAddr) -> bool {
        let pkt = [0x40, 0x00, 0x00, 0x03, b'a', b'b', b'c', 0];
        self.e.handle_client(self.now, c, &pkt).is_some()
    }
}

/// Two engines of one server (shards 0 and 1): one port pool, one key.
fn two_engines() -> (T, T) {
    let cfg = mobile_config();
    let mut other = cfg.clone();
    other.shard = 1;
    (T::with(cfg), T::with(other))
}

const ALICE: (&str, &str) = ("alice", "wonderland");
const BOB: (&str, &str) = ("bob", "builder");

#[test]
fn mobility_off_stream_clients_and_a_filled_ticket_are_refused() {
    let mut t = T::new();
    let ask = || {
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_MOBILITY_TICKET, &[])
    };
    let r = t.signed(client(2), ask());
    assert_eq!(code(&r), Some(405));
    assert_eq!(wire::error_code(&r), Some(405));
    assert_eq!(t.e.allocation_count(), 0);
    // Without the attribute, the same Allocate succeeds.
    t.allocate(client(2));

    let mut t = T::with(mobile_config());
    let stream = ClientAddr {
        remote: client(3).remote,
        via: Via::Stream {
            listener: 0,
            conn: 1,
            tls: false,
        },
    };
    assert_eq!(
        code(&t.signed(stream, ask())),
        Some(405),
        "TCP: nothing to move"
    );
    let filled = Req::new(METHOD_ALLOCATE)
        .transport(17)
        .attr(ATTR_MOBILITY_TICKET, &[1, 2, 3, 4]);
    assert_eq!(code(&t.signed(client(4), filled)), Some(400));
    assert_eq!(t.e.allocation_count(), 0);
    // A Refresh with a ticket while mobility is off: 405.
    let mut off = T::new();
    let r = off.refresh_with(client(5), &[0; 63], ALICE);
    assert_eq!(code(&r[0]), Some(405));
}

#[test]
fn every_refresh_answer_carries_a_new_ticket_and_only_the_newest_moves() {
    let mut t = T::with(mobile_config());
    let c1 = client(1);
    let first = t.allocate_mobile(c1);
    // 32 printable bytes: coturn's client keeps it as a C string.
    assert_eq!(first.len(), 32);
    assert!(
        first
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    );
    let r = t.signed(c1, Req::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(code(&r), None);
    let second = wire::attr(&r, ATTR_MOBILITY_TICKET).unwrap().to_vec();
    assert_ne!(first, second);
    // Without mobility asked, no ticket.
    t.allocate(client(9));
    let r = t.signed(client(9), Req::new(METHOD_REFRESH).lifetime(600));
    assert!(wire::attr(&r, ATTR_MOBILITY_TICKET).is_none());

    // The superseded ticket moves nothing: 437.
    let r = t.refresh_with(client(2), &first, ALICE);
    assert_eq!(code(&r[0]), Some(437));
    assert!(t.e.allocation_of(c1).is_some());
}

#[test]
fn a_move_within_one_engine_keeps_relay_permissions_and_channels() {
    let mut t = T::with(mobile_config());
    let (c1, c2, c3) = (client(1), client(2), client(3));
    let ticket = t.allocate_mobile(c1);
    let relayed = t.e.sessions(t.now)[0].relayed;
    assert_eq!(t.bind(c1, 0x4000, PEER), None);
    assert!(t.relays(c1));
    let id = t.e.allocation_of(c1).unwrap();
    t.grants.clear();

    // Another user with the ticket: 441; an altered ticket: 400.
    let r = t.refresh_with(c3, &ticket, BOB);
    assert_eq!(code(&r[0]), Some(441));
    let mut forged = ticket.clone();
    forged[4] ^= 1;
    let r = t.refresh_with(c3, &forged, ALICE);
    assert_eq!(code(&r[0]), Some(400));
    let r = t.refresh_with(c3, &ticket[..20], ALICE);
    assert_eq!(code(&r[0]), Some(400));
    assert_eq!(t.e.allocation_of(c1), Some(id), "nothing moved");

    let r = t.refresh_with(c2, &ticket, ALICE);
    assert_eq!(r.len(), 1);
    assert_eq!(code(&r[0]), None);
    assert!(signed_with(&r[0], &key()));
    let newer = wire::attr(&r[0], ATTR_MOBILITY_TICKET).unwrap().to_vec();
    assert_ne!(newer, ticket);
    assert_eq!(t.e.allocation_of(c2), Some(id));
    assert_eq!(t.e.allocation_of(c1), None);
    assert_eq!(t.e.stats.mobility_moves, 1);
    // The session shows its new address and the same relay.
    let s = t.e.sessions(t.now);
    assert_eq!((s.len(), s[0].client, s[0].relayed), (1, c2, relayed));
    // Data: from the new 5-tuple to the peer, back to the new 5-tuple;
    // the old 5-tuple's data goes nowhere.
    assert!(t.relays(c2));
    assert!(!t.relays(c1));
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    let out =
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 5)
            .unwrap();
    assert_eq!(out.client, c2);
    // A fast path follows: every grant ends at the old 5-tuple and starts
    // at the new one.
    let g = std::mem::take(&mut t.grants);
    assert_eq!(g.len(), 4, "{g:?}");
    assert!(
        g[..2]
            .iter()
            .all(|g| g.client == c1 && g.change == Change::Removed)
    );
    assert!(
        g[2..]
            .iter()
            .all(|g| g.client == c2 && g.change == Change::Created)
    );

    // The same user replaying the used ticket from a third address: 437.
    let r = t.refresh_with(c3, &ticket, ALICE);
    assert_eq!(code(&r[0]), Some(437));
    // The newest ticket moves it on, and once it is deleted, moves nothing.
    let r = t.refresh_with(c3, &newer, ALICE);
    assert_eq!(code(&r[0]), None);
    let last = wire::attr(&r[0], ATTR_MOBILITY_TICKET).unwrap().to_vec();
    let r = t.signed(c3, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r), None);
    let r = t.refresh_with(c2, &last, ALICE);
    assert_eq!(code(&r[0]), Some(437));
}

#[test]
fn a_move_between_engines_hands_the_allocation_over() {
    let (mut a, mut b) = two_engines();
    let (c1, c2) = (client(1), client(2));
    let ticket = a.allocate_mobile(c1);
    assert_eq!(a.permit(c1, PEER), None);
    let relayed = a.e.sessions(a.now)[0].relayed;

    // Engine b checks the ticket and the user, and asks engine a.
    let n = b.nonce_for(c2);
    let req = Req::new(METHOD_REFRESH)
        .attr(ATTR_MOBILITY_TICKET, &ticket)
        .sign_as("alice", "wonderland", &n);
    assert!(b.send(c2, &req).is_empty(), "answered after the hand-over");
    let h = b.handoffs.pop().expect("a hand-over");
    assert_eq!((h.owner, h.from), (0, 1));
    // Its retransmission starts nothing more.
    assert!(b.send(c2, &req).is_empty());
    assert!(b.handoffs.is_empty());

    let moving = a.e.surrender(a.now, Box::new(h.clone())).expect("given up");
    let old = moving.old_id;
    assert_eq!(moving.to(), 1);
    assert_eq!(a.e.allocation_count(), 0);
    assert!(!a.relays(c1));
    // Asked again (a second engine with the same ticket): 437 from a.
    assert!(a.e.surrender(a.now, Box::new(h)).is_none());
    let r = a.drain(c2);
    assert_eq!(r.len(), 1);
    assert_eq!(code(&r[0]), Some(437));

    let id = b.e.adopt(b.now, moving);
    let r = b.drain(c2);
    assert_eq!(r.len(), 2, "the Refresh and its retransmission answered");
    assert_eq!(code(&r[0]), None);
    assert_eq!(r[0].raw, r[1].raw);
    let newer = wire::attr(&r[0], ATTR_MOBILITY_TICKET).unwrap().to_vec();
    assert_eq!(b.e.allocation_of(c2), Some(id));
    let s = b.e.sessions(b.now);
    assert_eq!((s[0].client, s[0].relayed), (c2, relayed));
    // Its permission came along: peer data reaches the new 5-tuple.
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    let out =
        b.e.handle_peer(b.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 5)
            .unwrap();
    assert_eq!(out.client, c2);
    // The port stays held: a's id is free, the pool did not get it back.
    assert_eq!(a.e.free_ports(), 9);
    assert_eq!(old.0, 0);
    // The newer ticket names engine b: a move from b's own 5-tuple stays there.
    let r = b.refresh_with(client(3), &newer, ALICE);
    assert_eq!(code(&r[0]), None);
    assert!(b.handoffs.is_empty());
    // The allocation's end gives the port back once.
    let r = b.signed(client(3), Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r), None);
    assert_eq!(b.e.free_ports(), 10);
}

/// One user with one valid ticket, from many new addresses at once: each
/// asks the owner for the allocation, but at most 256 such moves wait at
/// one engine; the rest are dropped unanswered (the clients retransmit).
#[test]
fn moves_in_flight_are_bounded() {
    let (mut a, mut b) = two_engines();
    let ticket = a.allocate_mobile(client(1));
    for port in 1000..1300 {
        assert!(b.refresh_with(client(port), &ticket, ALICE).is_empty());
    }
    assert_eq!(b.handoffs.len(), 256);
    // The first is given the allocation; every other gets 437 from its owner.
    let mut given = 0;
    for h in std::mem::take(&mut b.handoffs) {
        let c = h.client();
        match a.e.surrender(a.now, Box::new(h)) {
            Some(m) => {
                given += 1;
                b.e.adopt(b.now, m);
                assert_eq!(code(&b.drain(c)[0]), None);
            }
            None => assert_eq!(code(&a.drain(c)[0]), Some(437)),
        }
    }
    assert_eq!(given, 1);
    assert_eq!((a.e.allocation_count(), b.e.allocation_count()), (0, 1));
}

/// A reload that turns mobility off: no more tickets, and a ticket from a
/// new address gets 405.
#[test]
fn a_reload_turning_mobility_off_stops_tickets() {
    let mut t = T::with(mobile_config());
    let ticket = t.allocate_mobile(client(1));
    let mut off = t.e.cfg.live.clone();
    off.mobility = false;
    t.e.update(off);
    let r = t.signed(client(1), Req::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(code(&r), None);
    assert!(wire::attr(&r, ATTR_MOBILITY_TICKET).is_none());
    let r = t.refresh_with(client(2), &ticket, ALICE);
    assert_eq!(code(&r[0]), Some(405));
}
