//! Users and secrets of a cluster store: a request under an unknown name
//! waits for the shell's lookup, bounded in number and time.

use super::*;
use crate::auth::StaticUser;

/// Feed `p` from `c`; the names looked up and the answers to `c`.
fn feed(t: &mut T, c: ClientAddr, p: &[u8]) -> (Vec<String>, Vec<Message>) {
    assert!(t.e.handle_client(t.now, c, p).is_none());
    take(t, c)
}

fn take(t: &mut T, c: ClientAddr) -> (Vec<String>, Vec<Message>) {
    let (mut names, mut answers) = (Vec::new(), Vec::new());
    while let Some(o) = t.e.poll_output() {
        match o {
            Output::LookupUser { name } => names.push(name),
            Output::Transmit { to, data } if to == c => answers.push(wire::decode(&data).unwrap()),
            Output::OpenRelay { alloc, .. } => t.e.relay_opened(t.now, alloc, true),
            _ => {}
        }
    }
    (names, answers)
}

fn allocate_as(t: &T, c: ClientAddr, user: &str, pass: &str) -> Vec<u8> {
    let n = t.nonce_for(c);
    Req::new(METHOD_ALLOCATE)
        .transport(17)
        .sign_as(user, pass, &n)
}

#[test]
fn an_unknown_name_waits_for_its_lookup_then_allocates() {
    let mut t = T::new();
    t.e.cluster_on();
    let (names, answers) = {
        let req = allocate_as(&t, client(7), "carol", "pw");
        feed(&mut t, client(7), &req)
    };
    assert_eq!(names, ["carol"]);
    assert!(answers.is_empty(), "parked, not answered");
    // A second request for the same name asks no second lookup.
    let (names, _) = {
        let req = allocate_as(&t, client(8), "carol", "bad");
        feed(&mut t, client(8), &req)
    };
    assert!(names.is_empty());
    t.e.cluster_user(t.now, "carol", Some(StaticUser::from("pw")));
    let (_, answers) = take(&mut t, client(7));
    assert_eq!(answers.len(), 1);
    assert_eq!(code(&answers[0]), None, "carol allocates");
    // Now known: no lookup, answered at once (the wrong password gets 401).
    let (names, answers) = {
        let req = allocate_as(&t, client(9), "carol", "bad");
        feed(&mut t, client(9), &req)
    };
    assert!(names.is_empty());
    assert_eq!(code(&answers[0]), Some(401));
    // Forgotten (the store changed it): looked up again.
    t.e.cluster_forget(Some("carol"));
    let (names, _) = {
        let req = allocate_as(&t, client(10), "carol", "pw");
        feed(&mut t, client(10), &req)
    };
    assert_eq!(names, ["carol"]);
}

#[test]
fn a_lookup_that_does_not_come_ends_in_401_and_absent_names_cost_one_lookup() {
    let mut t = T::new();
    t.e.cluster_on();
    let (names, answers) = {
        let req = allocate_as(&t, client(7), "mallory", "x");
        feed(&mut t, client(7), &req)
    };
    assert_eq!((names.len(), answers.len()), (1, 0));
    let due =
        t.e.poll_timeout()
            .expect("a deadline for the parked request");
    assert!(due <= t.now + crate::engine::cluster::PARK_TIMEOUT);
    t.now = due;
    t.e.handle_timeout(t.now);
    let (_, answers) = take(&mut t, client(7));
    assert_eq!(code(&answers[0]), Some(401));
    // The store says no: later requests are refused without a lookup.
    t.e.cluster_user(t.now, "mallory", None);
    let (names, answers) = {
        let req = allocate_as(&t, client(8), "mallory", "x");
        feed(&mut t, client(8), &req)
    };
    assert!(names.is_empty());
    assert_eq!(code(&answers[0]), Some(401));
    // TOML users never wait, nor do REST names.
    let (names, answers) = {
        let req = allocate_as(&t, client(9), "alice", "wonderland");
        feed(&mut t, client(9), &req)
    };
    assert!(names.is_empty());
    assert_eq!(code(&answers[0]), None);
}

/// A client at address number `n` (distinct sources for the per-source
/// bounds), on UDP.
fn source(n: u16, port: u16) -> ClientAddr {
    ClientAddr {
        remote: SocketAddr::new(
            std::net::Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8).into(),
            port,
        ),
        via: Via::Udp(0),
    }
}

/// Everything queued: the names looked up, and the codes of the answers
/// to anyone (`None`: success).
fn take_any(t: &mut T) -> (Vec<String>, Vec<Option<u16>>) {
    let (mut names, mut codes) = (Vec::new(), Vec::new());
    while let Some(o) = t.e.poll_output() {
        match o {
            Output::LookupUser { name } => names.push(name),
            Output::Transmit { data, .. } => codes.push(code(&wire::decode(&data).unwrap())),
            Output::OpenRelay { alloc, .. } => t.e.relay_opened(t.now, alloc, true),
            _ => {}
        }
    }
    (names, codes)
}

#[test]
fn parked_requests_are_bounded() {
    use crate::engine::cluster::{MAX_PARKED, MAX_PARKED_PER_SOURCE};
    let mut t = T::new();
    t.e.cluster_on();
    let per = MAX_PARKED_PER_SOURCE;
    // Sources of `per` requests each fill the park; each request beyond
    // (from a source with fewer) lets the busiest source's oldest go.
    for i in 0..MAX_PARKED + 5 {
        let c = source((i / per) as u16, 1000 + i as u16);
        let req = allocate_as(&t, c, &format!("n{i}"), "x");
        assert!(t.e.handle_client(t.now, c, &req).is_none());
        let (names, codes) = take_any(&mut t);
        assert_eq!(names.len(), 1, "request {i} asks its lookup");
        if i < MAX_PARKED {
            assert!(codes.is_empty(), "request {i} is held");
        } else {
            assert_eq!(
                codes,
                [Some(401)],
                "over the bound: one held request lets go"
            );
        }
    }
    // One source holds `per`; its next is refused at once, no lookup.
    let mut t = T::new();
    t.e.cluster_on();
    for i in 0..=per {
        let c = source(1, 1000 + i as u16);
        let req = allocate_as(&t, c, &format!("m{i}"), "x");
        let (names, answers) = feed(&mut t, c, &req);
        if i < per {
            assert_eq!((names.len(), answers.len()), (1, 0), "request {i} held");
        } else {
            assert!(names.is_empty());
            assert_eq!(code(&answers[0]), Some(401));
        }
    }
}

/// 64 junk names from a few sources neither fill the park nor keep a real
/// user of another source from being looked up.
#[test]
fn junk_names_do_not_lock_out_other_sources() {
    use crate::engine::cluster::{MAX_PARKED, MAX_PARKED_PER_SOURCE};
    let mut t = T::new();
    t.e.cluster_on();
    let mut held = 0;
    for i in 0..MAX_PARKED {
        let c = source(1 + (i % 2) as u16, 2000 + i as u16);
        let req = allocate_as(&t, c, &format!("junk{i}"), "x");
        let (names, answers) = feed(&mut t, c, &req);
        if answers.is_empty() {
            held += names.len();
        }
    }
    assert_eq!(
        held,
        2 * MAX_PARKED_PER_SOURCE,
        "two sources hold only their share"
    );
    let carol = source(9, 3478);
    let req = allocate_as(&t, carol, "carol", "pw");
    let (names, answers) = feed(&mut t, carol, &req);
    assert_eq!(names, ["carol"], "carol is looked up");
    assert!(answers.is_empty(), "and waits for it");
    t.e.cluster_user(t.now, "carol", Some(StaticUser::from("pw")));
    let (_, answers) = take(&mut t, carol);
    assert_eq!(code(&answers[0]), None, "carol allocates");
}

/// A TCP client's Allocate waits for its lookup; its connection closes
/// meanwhile: the answer does not allocate for a 5-tuple that is gone.
#[test]
fn a_closed_connection_drops_its_parked_requests() {
    let mut t = T::new();
    t.e.cluster_on();
    let c = ClientAddr {
        remote: client(7).remote,
        via: Via::Stream {
            listener: 0,
            conn: 42,
            tls: false,
        },
    };
    let req = allocate_as(&t, c, "carol", "pw");
    let (names, answers) = feed(&mut t, c, &req);
    assert_eq!((names.len(), answers.len()), (1, 0), "parked");
    t.e.connection_closed(t.now, c);
    assert!(t.e.poll_timeout().is_none(), "nothing left to wait for");
    t.e.cluster_user(t.now, "carol", Some(StaticUser::from("pw")));
    let (_, answers) = take(&mut t, c);
    assert!(answers.is_empty(), "no answer to a closed connection");
    assert!(t.e.allocation_of(c).is_none());
}

/// Each parked request counts against its source's unauthenticated rate:
/// a source spraying new names gets a handful of lookups, not one each.
#[test]
fn lookups_count_against_the_source_rate() {
    let mut t = with_limits(|l| l.unauthenticated_rate = 5);
    t.e.cluster_on();
    let mut asked = 0;
    for i in 0..20u16 {
        let c = client(4000 + i);
        let req = allocate_as(&t, c, &format!("spray{i}"), "x");
        let (names, _) = feed(&mut t, c, &req);
        asked += names.len();
        // Each lookup answered at once: the per-source bound on parked
        // requests is not what stops it.
        for n in names {
            t.e.cluster_user(t.now, &n, None);
        }
        let _ = take_any(&mut t);
    }
    assert!(
        (1..5).contains(&asked),
        "{asked} lookups at 5 answers a second"
    );
    // Another source is not charged for it.
    let c = source(3, 1);
    let req = allocate_as(&t, c, "dave", "x");
    assert_eq!(feed(&mut t, c, &req).0, ["dave"]);
}

/// One engine asks at most MAX_LOOKUPS_PER_SECOND lookups, however many
/// sources ask; the next second has a new budget.
#[test]
fn lookups_per_second_are_bounded() {
    use crate::engine::cluster::MAX_LOOKUPS_PER_SECOND;
    let mut t = T::new();
    t.e.cluster_on();
    let ask = |t: &mut T, i: u32| {
        let c = source(i as u16, 1);
        let req = allocate_as(t, c, &format!("x{i}"), "x");
        let (names, _) = feed(t, c, &req);
        for n in &names {
            t.e.cluster_user(t.now, n, None);
        }
        let _ = take_any(t);
        names.len()
    };
    let n = MAX_LOOKUPS_PER_SECOND + 20;
    let asked: usize = (0..n).map(|i| ask(&mut t, i)).sum();
    assert_eq!(asked, MAX_LOOKUPS_PER_SECOND as usize);
    t.now += Duration::from_secs(1);
    assert_eq!(ask(&mut t, n), 1, "a new second, a new budget");
}

#[test]
fn store_secrets_verify_rest_names() {
    let mut t = T::new();
    t.e.cluster_on();
    let (u, p) = crate::auth::rest_credentials("from-redis", "dave", UNIX0 + 100);
    let (names, answers) = {
        let req = allocate_as(&t, client(7), &u, &p);
        feed(&mut t, client(7), &req)
    };
    assert!(names.is_empty(), "REST names are never looked up");
    assert_eq!(code(&answers[0]), Some(401));
    t.e.cluster_secrets(&["from-redis".to_owned()]);
    let (_, answers) = {
        let req = allocate_as(&t, client(7), &u, &p);
        feed(&mut t, client(7), &req)
    };
    assert_eq!(code(&answers[0]), None);
}
