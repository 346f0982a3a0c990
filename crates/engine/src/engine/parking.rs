//! Relay ports parked between allocations, with their sockets.
//!
//! Binding a relay socket and closing it again is a good part of what an
//! allocation costs the server (socket, buffer options, bind, epoll
//! registration, close) when allocations come and go by the thousand. So
//! an engine whose shell can keep a socket open ([`Engine::park_relays`])
//! and that sees such churn (at least [`PARK_CHURN`] allocations made in a
//! second) does not give the port of an ended UDP allocation back to the
//! pool at once: it keeps the port for [`PARK_HOLD`] and asks the shell to
//! keep its socket ([`Output::ParkRelay`]). An Allocate of the same user
//! within that time takes a parked port before the pool's, and the shell reuses the socket it kept for that
//! address, drained of what peers sent meanwhile. A port unused for
//! [`PARK_HOLD`] goes back to the pool and the shell closes its socket
//! ([`Output::CloseParked`]).
//!
//! What does not change: a parked port is not free in the pool, so no other
//! engine binds it; it is not a live relay port (peers of other clients
//! cannot reach it, RFC 8656 §9 policy); and a new allocation starts with
//! no permission (§9), so whatever an old peer still sends is dropped
//! until the new client permits it. A reserved pair (EVEN-PORT with R,
//! RESERVATION-TOKEN, §14.6, §14.9) never comes from here, an EVEN-PORT
//! allocation takes only an even parked port, and a dual allocation never
//! parks or reuses (its two ports are one pair of sockets).
//!
//! What parking costs other engines: a freed port serves only this engine
//! for at most [`PARK_HOLD`], at most [`PARK_MAX`] ports per engine, and
//! only while its relay address has [`PARK_FREE_MIN`] free ports in the
//! pool: parking never makes the range run out (508). Below the churn
//! mark nothing parks, so a port freed by an occasional allocation is
//! free at once, for anyone, as it always was.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{Allocation, State};
use super::ports::{self, Relay};
use super::{Engine, Output};
use crate::addr::{AllocId, RelayPort};

/// How long a parked port waits for an Allocate before it goes back to the
/// pool.
pub const PARK_HOLD: Duration = Duration::from_millis(500);

/// Ports one engine parks at most; past that, an ended allocation's port
/// goes back to the pool as before.
pub const PARK_MAX: usize = 64;

/// Allocations made in one second (this one or the last) from which an
/// engine parks.
pub const PARK_CHURN: u32 = 64;

/// Free ports of a relay address in the pool below which nothing of it
/// parks.
pub const PARK_FREE_MIN: usize = 4 * PARK_MAX;

/// The window of [`PARK_CHURN`].
const CHURN_WINDOW: Duration = Duration::from_secs(1);

/// One parked port: the relay address and family its socket is bound for,
/// and the user whose allocation had it (only that user's next Allocate
/// takes it).
#[derive(Debug, Clone)]
struct Spot {
    until: Instant,
    relay: Relay,
    v6: bool,
    port: RelayPort,
    user: String,
}

/// This engine's parked ports, oldest first.
#[derive(Debug, Default)]
pub(super) struct Parking {
    spots: VecDeque<Spot>,
    /// How many may be parked: 0 (the default) parks nothing.
    cap: usize,
    /// Allocations made since `since`, and in the window before it.
    since: Option<Instant>,
    made: u32,
    made_before: u32,
}

impl Parking {
    /// An allocation was made at `now`.
    pub(super) fn made(&mut self, now: Instant) {
        self.roll(now);
        self.made = self.made.saturating_add(1);
    }

    /// Start a new churn window if the current one is over at `now`.
    fn roll(&mut self, now: Instant) {
        let since = *self.since.get_or_insert(now);
        let age = now.saturating_duration_since(since);
        if age >= CHURN_WINDOW {
            self.made_before = if age < 2 * CHURN_WINDOW { self.made } else { 0 };
            self.made = 0;
            self.since = Some(now);
        }
    }

    /// Whether allocations come fast enough at `now` for parking to pay.
    fn churning(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.made.max(self.made_before) >= PARK_CHURN
    }

    /// When the oldest parked port goes back to the pool.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.spots.front().map(|s| s.until)
    }
}

impl Engine {
    /// Let this engine park the ports of ended UDP allocations (`on`), for
    /// a shell that keeps their sockets on [`Output::ParkRelay`] and reuses
    /// them on the next [`Output::OpenRelay`] at the same address.
    pub fn park_relays(&mut self, on: bool) {
        self.parking.cap = if on { PARK_MAX } else { 0 };
        if !on {
            self.unpark_all();
        }
    }

    /// Relay ports this engine holds parked now (none of them is free in
    /// the pool).
    pub fn parked_ports(&self) -> usize {
        self.parking.spots.len()
    }

    /// The output that ends allocation `id` (`a`, just taken out of the
    /// table) at `now`: park its port ([`Output::ParkRelay`]) if it can,
    /// else give the port back to the pool and close the socket.
    pub(super) fn end_relay(&mut self, now: Instant, id: AllocId, a: &Allocation) -> Output {
        let parks = self.parking.spots.len() < self.parking.cap
            && a.tcp.is_none()
            && a.extra.is_none()
            && matches!(a.state, State::Active)
            && self.parking.churning(now)
            && self.cfg.shared.ports.free_at_least(a.relay, PARK_FREE_MIN);
        if !parks {
            self.release_port(a.relay, a.port);
            return Output::CloseRelay { alloc: id };
        }
        let v6 = a.relayed.is_ipv6();
        self.parking.spots.push_back(Spot {
            until: now + PARK_HOLD,
            relay: a.relay,
            v6,
            port: a.port,
            user: a.username.clone(),
        });
        let bind = SocketAddr::new(self.bind_ip(a.relay, v6), a.port.0);
        Output::ParkRelay { alloc: id, bind }
    }

    /// A parked port for `user`'s new single-family allocation (IPv6 if
    /// `v6`), an even one if `even`: one that `user` had, picked at random
    /// among those that fit, so that the port stays hard to guess. `None`
    /// if none fits. Never another user's: peers still sending to a port
    /// just given up (an SFU the old client used) would reach whoever took
    /// it and permitted their IP, and a user who churns could collect the
    /// ports others gave up.
    pub(super) fn take_parked(
        &mut self,
        user: &str,
        v6: bool,
        even: bool,
    ) -> Option<(Relay, RelayPort)> {
        let fits = |s: &Spot| s.v6 == v6 && (!even || s.port.0.is_multiple_of(2)) && s.user == user;
        let n = self.parking.spots.iter().filter(|s| fits(s)).count();
        if n == 0 {
            return None;
        }
        let pick = ports::next_random(&mut self.port_random) as usize % n;
        let i = self
            .parking
            .spots
            .iter()
            .enumerate()
            .filter(|(_, s)| fits(s))
            .nth(pick)
            .map(|(i, _)| i)?;
        let s = self.parking.spots.remove(i)?;
        Some((s.relay, s.port))
    }

    /// Give the ports parked until `now` or before back to the pool, and
    /// have their sockets closed.
    pub(super) fn expire_parked(&mut self, now: Instant) {
        while self.parking.spots.front().is_some_and(|s| s.until <= now) {
            if let Some(s) = self.parking.spots.pop_front() {
                self.unpark(s);
            }
        }
    }

    /// Give every parked port back to the pool, and have its socket closed.
    pub(super) fn unpark_all(&mut self) {
        while let Some(s) = self.parking.spots.pop_front() {
            self.unpark(s);
        }
    }

    fn unpark(&mut self, s: Spot) {
        self.release_port(s.relay, s.port);
        let bind = SocketAddr::new(self.bind_ip(s.relay, s.v6), s.port.0);
        self.out.push_back(Output::CloseParked { bind });
    }
}
