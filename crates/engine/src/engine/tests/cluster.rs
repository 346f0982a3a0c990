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

#[test]
fn parked_requests_are_bounded() {
    let mut t = T::new();
    t.e.cluster_on();
    let mut asked = 0;
    for i in 0..crate::engine::cluster::MAX_PARKED + 5 {
        let c = client(1000 + i as u16);
        let (names, answers) = {
            let req = allocate_as(&t, c, &format!("n{i}"), "x");
            feed(&mut t, c, &req)
        };
        asked += names.len();
        if i < crate::engine::cluster::MAX_PARKED {
            assert!(answers.is_empty());
        } else {
            assert_eq!(
                code(&answers[0]),
                Some(401),
                "over the bound: answered at once"
            );
        }
    }
    assert_eq!(asked, crate::engine::cluster::MAX_PARKED);
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
