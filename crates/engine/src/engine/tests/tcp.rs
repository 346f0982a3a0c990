//! TCP allocations (RFC 6062) with the engine's clock: the 30 s bind
//! deadline of peer connections, Connect's answers, the quota, and what
//! ends with the allocation.

use super::*;

const CONTROL: u32 = 1;

fn stream(port: u16, conn: u32) -> ClientAddr {
    ClientAddr {
        remote: SocketAddr::new("203.0.113.5".parse().unwrap(), port),
        via: Via::Stream {
            listener: 0,
            conn,
            tls: false,
        },
    }
}

/// Everything the engine queued: answers and indications by addressee,
/// and the other outputs in order. Relays open at once.
fn outputs(t: &mut T) -> (Vec<(ClientAddr, Message)>, Vec<Output>) {
    let (mut sent, mut other) = (Vec::new(), Vec::new());
    while let Some(o) = t.e.poll_output() {
        match o {
            Output::Transmit { to, data } => sent.push((to, wire::decode(&data).unwrap())),
            Output::OpenTcpRelay { alloc, bind } => {
                t.opened.push(bind);
                t.e.relay_opened(t.now, alloc, true);
            }
            o => other.push(o),
        }
    }
    (sent, other)
}

/// One signed request from `c`: its answer (or none yet).
fn ask(t: &mut T, c: ClientAddr, req: Req) -> (Option<Message>, Vec<Output>) {
    let n = t.nonce_for(c);
    let fwd =
        t.e.handle_client(t.now, c, &req.sign_as("alice", "wonderland", &n));
    assert!(fwd.is_none());
    let (mut sent, other) = outputs(t);
    assert!(sent.len() <= 1, "{sent:?}");
    (
        sent.pop().map(|(to, m)| {
            assert_eq!(to, c);
            m
        }),
        other,
    )
}

/// A TCP allocation for `c`: its id and relayed address.
fn allocate_tcp(t: &mut T, c: ClientAddr) -> (AllocId, SocketAddr) {
    let (r, _) = ask(t, c, Req::new(METHOD_ALLOCATE).transport(PROTO_TCP));
    let r = r.expect("an answer");
    assert_eq!(code(&r), None, "TCP Allocate refused");
    assert!(matches!(t.opened.last(), Some(b) if b.port() >= 50000));
    let id = t.e.allocation_of(c).unwrap();
    (id, wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap())
}

fn bind_req(conn: u32) -> Req {
    Req::new(METHOD_CONNECTION_BIND).attr(ATTR_CONNECTION_ID, &conn.to_be_bytes())
}

#[test]
fn an_incoming_connection_waits_30_s_for_its_bind() {
    let mut t = T::new();
    let c = stream(1, CONTROL);
    let (id, _) = allocate_tcp(&mut t, c);
    let p = peer(PEER);
    // No permission: refused, and the client hears nothing.
    assert_eq!(t.e.peer_connection(t.now, id, p), None);
    assert!(outputs(&mut t).0.is_empty());
    assert_eq!(t.permit(c, PEER), None);
    let conn = t.e.peer_connection(t.now, id, p).expect("let in");
    let (sent, _) = outputs(&mut t);
    let [(to, attempt)] = sent.as_slice() else {
        panic!("{sent:?}")
    };
    assert_eq!(*to, c);
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    assert_eq!(attempt.typ.class, CLASS_INDICATION);
    assert_eq!(wire::xor_address(attempt, ATTR_XOR_PEER_ADDRESS), Some(p));
    assert_eq!(
        wire::attr(attempt, ATTR_CONNECTION_ID),
        Some(&conn.to_be_bytes()[..])
    );
    // 30 s later it is too late.
    t.advance(UNBOUND_TIMEOUT.as_secs());
    let data = stream(2, 2);
    let (r, other) = ask(&mut t, data, bind_req(conn));
    assert_eq!(code(&r.unwrap()), Some(400));
    assert!(other.is_empty());
    // One bound within the 30 s is a data connection.
    let p2: SocketAddr = "93.184.216.34:9002".parse().unwrap();
    let conn = t.e.peer_connection(t.now, id, p2).expect("let in");
    outputs(&mut t);
    t.advance(UNBOUND_TIMEOUT.as_secs() - 1);
    let (r, other) = ask(&mut t, data, bind_req(conn));
    assert_eq!(code(&r.unwrap()), None);
    let [
        Output::BindData {
            client,
            conn: bound,
            share,
        },
    ] = other.as_slice()
    else {
        panic!("{other:?}")
    };
    assert_eq!((*client, *bound), (data, conn));
    // Only once, and only for its user.
    let (r, _) = ask(&mut t, stream(3, 3), bind_req(conn));
    assert_eq!(code(&r.unwrap()), Some(400));
    // A second data connection of the allocation shares the first one's
    // ceiling; another allocation's has its own.
    let p3: SocketAddr = "93.184.216.34:9003".parse().unwrap();
    let second = t.e.peer_connection(t.now, id, p3).expect("let in");
    outputs(&mut t);
    let (_, other) = ask(&mut t, stream(4, 4), bind_req(second));
    let [Output::BindData { share: same, .. }] = other.as_slice() else {
        panic!("{other:?}")
    };
    assert!(std::sync::Arc::ptr_eq(share, same));
    let c2 = stream(5, 5);
    let (id2, _) = allocate_tcp(&mut t, c2);
    assert_eq!(t.permit(c2, PEER), None);
    let third = t.e.peer_connection(t.now, id2, p).expect("let in");
    outputs(&mut t);
    let (_, other) = ask(&mut t, stream(6, 6), bind_req(third));
    let [Output::BindData { share: own, .. }] = other.as_slice() else {
        panic!("{other:?}")
    };
    assert!(!std::sync::Arc::ptr_eq(share, own));
}

/// The pipes of one allocation, on any worker, take turns on one clock per
/// direction: together they wait as one pipe would at the ceiling.
#[test]
fn pipes_of_an_allocation_share_one_ceiling() {
    use crate::engine::PipeShare;
    use crate::engine::stats::Direction;
    let t0 = Instant::now();
    let share = PipeShare::new(t0);
    // No ceiling: counted, never held.
    assert_eq!(share.sent(Direction::ToPeer, 1_000_000, t0), Duration::ZERO);
    share.set_bandwidth(1000);
    // A burst of a quarter of a second goes at once, from either pipe.
    assert_eq!(share.sent(Direction::ToPeer, 150, t0), Duration::ZERO);
    assert_eq!(share.sent(Direction::ToPeer, 100, t0), Duration::ZERO);
    // Beyond it, each write waits for what all of them sent: 500 bytes
    // at 1000 B/s are half a second, less the burst.
    assert_eq!(
        share.sent(Direction::ToPeer, 250, t0),
        Duration::from_millis(250)
    );
    assert_eq!(
        share.sent(Direction::ToPeer, 100, t0),
        Duration::from_millis(350)
    );
    // The other direction has its own clock.
    assert_eq!(share.sent(Direction::ToClient, 250, t0), Duration::ZERO);
    // Time pays the debt off; idle time is not saved up.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(share.sent(Direction::ToPeer, 250, later), Duration::ZERO);
    assert_eq!(
        share.sent(Direction::ToPeer, 100, later),
        Duration::from_millis(100)
    );
    assert_eq!(share.relayed(), [1_000_000 + 950, 250]);
}

#[test]
fn connect_answers_quota_and_the_end_of_the_allocation() {
    let mut cfg = config((50000..50010).collect());
    cfg.live.limits.connections_per_allocation = 2;
    let mut t = T::with(cfg);
    let c = stream(1, CONTROL);
    let (id, relayed) = allocate_tcp(&mut t, c);
    let connect = |p: &str| Req::new(METHOD_CONNECT).peer(peer(p));
    // The shell is asked to connect from the relayed port; no answer yet.
    let (r, other) = ask(&mut t, c, connect(PEER));
    assert!(r.is_none());
    let [
        Output::ConnectPeer {
            alloc,
            conn,
            bind,
            peer: to,
        },
    ] = other.as_slice()
    else {
        panic!("{other:?}")
    };
    assert_eq!((*alloc, *to, bind.port()), (id, peer(PEER), relayed.port()));
    let first = *conn;
    // The same peer again, while the first is under way: 446.
    let (r, _) = ask(&mut t, c, connect(PEER));
    assert_eq!(code(&r.unwrap()), Some(446));
    // A failed connection: 447, and its place is free again.
    let (_, other) = ask(&mut t, c, connect(PEER2));
    let [Output::ConnectPeer { conn: failed, .. }] = other.as_slice() else {
        panic!("{other:?}")
    };
    assert!(!t.e.peer_connected(t.now, *failed, false));
    let (sent, _) = outputs(&mut t);
    assert_eq!(code(&sent[0].1), Some(447));
    // Established: the answer carries the CONNECTION-ID.
    assert!(t.e.peer_connected(t.now, first, true));
    let (sent, _) = outputs(&mut t);
    assert_eq!(code(&sent[0].1), None);
    assert_eq!(
        wire::attr(&sent[0].1, ATTR_CONNECTION_ID),
        Some(&first.to_be_bytes()[..])
    );
    // Two connections at most.
    let (r, other) = ask(&mut t, c, connect(PEER2));
    assert!(r.is_none() && other.len() == 1);
    let (r, _) = ask(&mut t, c, connect("93.184.216.36:1"));
    assert_eq!(code(&r.unwrap()), Some(508));
    // Denied by the policy: 403.
    let (r, _) = ask(&mut t, c, connect("10.0.0.1:80"));
    assert_eq!(code(&r.unwrap()), Some(403));
    // The allocation ends: its connections are forgotten, its relay
    // closed, and a late report of a connect is refused.
    let (r, other) = ask(&mut t, c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r.unwrap()), None);
    assert!(other.contains(&Output::CloseRelay { alloc: id }));
    assert_eq!(t.e.cfg.shared.peer_conns.totals(), (0, 0));
    let (r, _) = ask(&mut t, stream(2, 2), bind_req(first));
    assert_eq!(code(&r.unwrap()), Some(400));
}

#[test]
fn bad_tcp_requests_get_400() {
    let mut t = T::new();
    // Over UDP.
    let r = t.signed(client(9), Req::new(METHOD_ALLOCATE).transport(PROTO_TCP));
    assert_eq!(code(&r), Some(400));
    let c = stream(1, CONTROL);
    for (a, v) in [
        (ATTR_EVEN_PORT, &[0u8][..]),
        (ATTR_RESERVATION_TOKEN, &[0; 8][..]),
        (ATTR_DONT_FRAGMENT, &[][..]),
    ] {
        let (r, _) = ask(
            &mut t,
            c,
            Req::new(METHOD_ALLOCATE).transport(PROTO_TCP).attr(a, v),
        );
        assert_eq!(code(&r.unwrap()), Some(400), "with {a}");
    }
    allocate_tcp(&mut t, c);
    let (r, _) = ask(
        &mut t,
        c,
        Req::new(METHOD_CHANNEL_BIND)
            .channel(0x4000)
            .peer(peer(PEER)),
    );
    assert_eq!(code(&r.unwrap()), Some(400));
    // A Send is dropped: no answer, nothing relayed.
    assert_eq!(t.permit(c, PEER), None);
    let send = Req::indication(METHOD_SEND)
        .peer(peer(PEER))
        .attr(ATTR_DATA, b"x")
        .bytes();
    assert!(t.e.handle_client(t.now, c, &send).is_none());
}

#[test]
fn a_reload_closes_peer_connections_the_new_policy_denies() {
    let mut t = T::new();
    let c = stream(1, CONTROL);
    let (id, _) = allocate_tcp(&mut t, c);
    assert_eq!(t.permit(c, PEER), None);
    let kept = t.e.peer_connection(t.now, id, peer(PEER)).unwrap();
    outputs(&mut t);
    assert_eq!(t.permit(c, PEER2), None);
    let denied = t.e.peer_connection(t.now, id, peer(PEER2)).unwrap();
    outputs(&mut t);
    let mut u = t.e.cfg.live.clone();
    u.policy = PeerPolicy::new(
        vec![],
        vec!["93.184.216.35/32".parse().unwrap()],
        vec!["198.51.100.1".parse().unwrap()],
        (50000, 50009),
    );
    t.e.update(u);
    let (_, other) = outputs(&mut t);
    let closed: Vec<_> = other
        .iter()
        .filter_map(|o| match o {
            Output::ClosePeerConn { conn } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![denied]);
    // The other still waits for its bind; the closed one binds no more.
    assert_eq!(t.e.cfg.shared.peer_conns.totals(), (1, 0));
    let (r, _) = ask(&mut t, stream(2, 2), bind_req(denied));
    assert_eq!(code(&r.unwrap()), Some(400));
    let (r, other) = ask(&mut t, stream(3, 3), bind_req(kept));
    assert_eq!(code(&r.unwrap()), None);
    // A reload's bandwidth ceiling reaches the pipes already bound.
    let [Output::BindData { share, .. }] = other.as_slice() else {
        panic!("{other:?}")
    };
    use crate::engine::stats::Direction;
    let now = t.now;
    assert_eq!(share.sent(Direction::ToPeer, 1 << 30, now), Duration::ZERO);
    let mut u = t.e.cfg.live.clone();
    u.limits.bandwidth = 1000;
    t.e.update(u);
    assert_eq!(
        share.sent(Direction::ToPeer, 1250, now),
        Duration::from_secs(1)
    );
}
