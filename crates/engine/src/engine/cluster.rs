//! Users and REST secrets a cluster store (Redis, in the shell) knows, as
//! one engine has learnt them: the engine never waits for the store.
//!
//! A request under a name neither the configuration nor this cache knows
//! is parked ([`Parked`], at most [`MAX_PARKED`], each at most
//! [`PARK_TIMEOUT`]) while [`crate::engine::Output::LookupUser`] asks the
//! shell; the shell's answer ([`crate::engine::Engine::cluster_user`])
//! fills the cache and the parked requests are handled again. A request
//! whose answer does not come in time is answered as an unknown user's.
//!
//! Both caches are bounded ([`MAX_USERS`], [`MAX_ABSENT`]); a name known
//! to be absent is forgotten after [`ABSENT_TTL`], or at once when the
//! shell says the store changed it.
//!
//! Lookups are paid for by whoever asks for them, since any client can
//! name a user nobody has: one source holds at most
//! [`MAX_PARKED_PER_SOURCE`] parked requests, and one engine asks at most
//! [`MAX_LOOKUPS_PER_SECOND`] lookups (the engine also charges each parked
//! request to its source's unauthenticated-answer rate).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::addr::{ClientAddr, Origin};
use crate::auth::{Key, StaticUser, rest_password};

/// Users one engine keeps; beyond, an arbitrary one is forgotten (and
/// looked up again when next used). Each costs its name, both keys (48
/// bytes) and the map's overhead: about 16 MB for names of 64 bytes.
pub const MAX_USERS: usize = 65_536;

/// Names known to be absent one engine keeps; beyond, the oldest go
/// first (all live equally long, so the oldest expire first). A USERNAME is at most 763 bytes (RFC 8489 §14.3),
/// so this holds at most about 3.3 MB of names.
pub const MAX_ABSENT: usize = 4096;

/// How long a name stays known to be absent without news from the store
/// (the store's notifications forget it sooner): while it does, requests
/// under it cost no lookup.
pub const ABSENT_TTL: Duration = Duration::from_secs(10);

/// Requests one engine holds while their users are looked up; beyond,
/// the busiest source's oldest parked request makes room (answered as an
/// unknown user's), or the newcomer is if its source is the busiest.
pub const MAX_PARKED: usize = 64;

/// Parked requests of one source (an IPv4 address or an IPv6 /64); beyond,
/// its request is answered as an unknown user's at once.
pub const MAX_PARKED_PER_SOURCE: usize = 4;

/// Lookups one engine asks per second; beyond, a request under a name it
/// does not know is answered as an unknown user's without one.
pub const MAX_LOOKUPS_PER_SECOND: u32 = 200;

/// The longest a request waits for a lookup.
pub const PARK_TIMEOUT: Duration = Duration::from_millis(50);

/// A request waiting for its user's lookup.
#[derive(Debug)]
pub(super) struct Parked {
    pub client: ClientAddr,
    pub packet: Vec<u8>,
    pub name: String,
    pub deadline: Instant,
}

/// What [`ClusterUsers::park`] did with a request.
#[derive(Debug)]
pub(super) enum Park {
    /// Held until its lookup's answer or its deadline.
    Held,
    /// Held, and this other request was let go to make room: it is to be
    /// answered as an unknown user's now.
    Displaced(Parked),
    /// Not held: to be answered as an unknown user's now.
    Refused,
}

/// What the cache says of a name.
pub(super) enum Known<'a> {
    User(&'a StaticUser),
    Absent,
    Unknown,
}

/// One engine's view of the cluster store's users and secrets.
#[derive(Default)]
pub(super) struct ClusterUsers {
    /// Whether a store is there to ask ([`crate::engine::Engine::cluster_on`]).
    pub on: bool,
    /// Users, their keys derived for the realm.
    users: HashMap<String, StaticUser>,
    /// Names the store does not have: until when that is believed, and
    /// the number of their entry in `absent_order`.
    absent: HashMap<String, (Instant, u64)>,
    /// The same names oldest first, by entry number (an entry whose name
    /// was forgotten or learnt again since is stale).
    absent_order: VecDeque<(u64, String)>,
    /// The number of the next entry of `absent_order`.
    absent_next: u64,
    /// The start of the current second of lookups, and how many it asked.
    lookups: Option<(Instant, u32)>,
    /// The store's REST secrets.
    secrets: Vec<Vec<u8>>,
    pub parked: Vec<Parked>,
    /// Set while a parked request is handled again: it is not parked twice.
    pub replaying: bool,
}

impl ClusterUsers {
    pub fn known(&self, name: &str, now: Instant) -> Known<'_> {
        if let Some(u) = self.users.get(name) {
            return Known::User(u);
        }
        match self.absent.get(name) {
            Some(&(until, _)) if until > now => Known::Absent,
            _ => Known::Unknown,
        }
    }

    /// What the store said of `name`: its credential, or none.
    pub fn learn(&mut self, now: Instant, name: &str, user: Option<StaticUser>) {
        self.users.remove(name);
        self.absent.remove(name);
        match user {
            Some(u) => {
                if self.users.len() >= MAX_USERS
                    && let Some(k) = self.users.keys().next().cloned()
                {
                    self.users.remove(&k);
                }
                self.users.insert(name.to_owned(), u);
            }
            None => {
                // Expired names go, then the oldest while full: each costs
                // O(1), however many are kept.
                while let Some((entry, old)) = self.absent_order.front() {
                    match self.absent.get(old) {
                        Some(&(until, e)) if e == *entry => {
                            if until > now && self.absent.len() < MAX_ABSENT {
                                break;
                            }
                            self.absent.remove(old);
                        }
                        _ => {}
                    }
                    self.absent_order.pop_front();
                }
                let entry = self.absent_next;
                self.absent_next += 1;
                self.absent
                    .insert(name.to_owned(), (now + ABSENT_TTL, entry));
                self.absent_order.push_back((entry, name.to_owned()));
                // Names forgotten or learnt again leave stale entries
                // behind: drop them before they outnumber the live ones.
                if self.absent_order.len() > 2 * MAX_ABSENT {
                    let absent = &self.absent;
                    self.absent_order
                        .retain(|(entry, n)| absent.get(n).is_some_and(|&(_, e)| e == *entry));
                }
            }
        }
    }

    /// Forget every name known to be absent (the store may have gained
    /// them while the shell could not hear of it).
    pub fn forget_absent(&mut self) {
        self.absent = HashMap::new();
        self.absent_order = VecDeque::new();
    }

    /// Forget what is known of `name`, or of every name.
    pub fn forget(&mut self, name: Option<&str>) {
        match name {
            Some(n) => {
                self.users.remove(n);
                self.absent.remove(n);
            }
            None => {
                self.users = HashMap::new();
                self.forget_absent();
            }
        }
    }

    pub fn set_secrets(&mut self, secrets: &[String]) {
        self.secrets = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
    }

    /// The keys the store's secrets give a REST `username`.
    pub fn rest_keys(&self, username: &str, algorithm: u16, realm: &str) -> Vec<Key> {
        self.secrets
            .iter()
            .filter_map(|s| {
                Key::for_algorithm(algorithm, username, realm, &rest_password(s, username))
            })
            .collect()
    }

    /// How many users and absent names are cached.
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        (self.users.len(), self.absent.len())
    }

    /// Hold a request for `name`, whose lookup is to be asked if `ask`
    /// (no request waits for it yet: [`Self::waiting_for`]). Refused when
    /// its source holds [`MAX_PARKED_PER_SOURCE`], when its lookup is over
    /// [`MAX_LOOKUPS_PER_SECOND`], or when [`MAX_PARKED`] are held and no
    /// other source holds more than its own.
    pub fn park(
        &mut self,
        now: Instant,
        client: ClientAddr,
        packet: &[u8],
        name: &str,
        ask: bool,
    ) -> Park {
        let origin = Origin::of(client.remote.ip());
        let held = |o: Origin| {
            self.parked
                .iter()
                .filter(|p| Origin::of(p.client.remote.ip()) == o)
                .count()
        };
        let mine = held(origin);
        if mine >= MAX_PARKED_PER_SOURCE {
            return Park::Refused;
        }
        // Full: the oldest request of the busiest source makes room.
        let mut room = None;
        if self.parked.len() >= MAX_PARKED {
            let busiest = self
                .parked
                .iter()
                .map(|p| Origin::of(p.client.remote.ip()))
                .max_by_key(|&o| held(o))
                .expect("parked requests");
            if held(busiest) <= mine {
                return Park::Refused;
            }
            room = self
                .parked
                .iter()
                .enumerate()
                .filter(|(_, p)| Origin::of(p.client.remote.ip()) == busiest)
                .min_by_key(|(_, p)| p.deadline)
                .map(|(i, _)| i);
        }
        if ask && !self.take_lookup(now) {
            return Park::Refused;
        }
        let displaced = room.map(|i| self.parked.swap_remove(i));
        self.parked.push(Parked {
            client,
            packet: packet.to_vec(),
            name: name.to_owned(),
            deadline: now + PARK_TIMEOUT,
        });
        match displaced {
            Some(p) => Park::Displaced(p),
            None => Park::Held,
        }
    }

    /// Whether one more lookup fits in this second's budget (and count it).
    fn take_lookup(&mut self, now: Instant) -> bool {
        let (start, asked) = match self.lookups {
            Some((start, asked)) if now < start + Duration::from_secs(1) => (start, asked),
            _ => (now, 0),
        };
        if asked >= MAX_LOOKUPS_PER_SECOND {
            return false;
        }
        self.lookups = Some((start, asked + 1));
        true
    }

    /// Whether a request already waits for `name` (its lookup is asked).
    pub fn waiting_for(&self, name: &str) -> bool {
        self.parked.iter().any(|p| p.name == name)
    }

    /// The earliest deadline of a parked request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.deadline).min()
    }

    /// Take the parked requests for which `pick` holds.
    pub fn unpark(&mut self, mut pick: impl FnMut(&Parked) -> bool) -> Vec<Parked> {
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.parked.len() {
            if pick(&self.parked[i]) {
                taken.push(self.parked.swap_remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_stay_within_their_bounds() {
        let mut c = ClusterUsers::default();
        let t0 = Instant::now();
        for i in 0..MAX_ABSENT * 3 {
            c.learn(t0, &format!("spray-{i}"), None);
        }
        assert_eq!(c.sizes(), (0, MAX_ABSENT));
        for i in 0..MAX_USERS + 10 {
            c.learn(t0, &format!("u{i}"), Some(StaticUser::from("pw")));
        }
        assert_eq!(c.sizes(), (MAX_USERS, MAX_ABSENT));
        // Absent names expire; a user learnt later replaces an absence.
        assert!(matches!(
            c.known("spray-0", t0 + ABSENT_TTL),
            Known::Unknown
        ));
        let last = format!("spray-{}", MAX_ABSENT * 3 - 1);
        assert!(matches!(c.known(&last, t0), Known::Absent));
        c.learn(t0, &last, Some(StaticUser::from("pw")));
        assert!(matches!(c.known(&last, t0), Known::User(_)));
        c.forget(Some(&last));
        assert!(matches!(c.known(&last, t0), Known::Unknown));
        c.forget(None);
        assert_eq!(c.sizes(), (0, 0));
    }

    /// A full absent cache lets its oldest name go (not an arbitrary one,
    /// and without scanning the rest); names learnt again or forgotten
    /// leave no more than a bounded queue behind.
    #[test]
    fn absent_names_leave_oldest_first() {
        let mut c = ClusterUsers::default();
        let t0 = Instant::now();
        for i in 0..MAX_ABSENT {
            c.learn(t0, &format!("a{i}"), None);
        }
        for i in 0..10 {
            c.learn(t0, &format!("b{i}"), None);
            assert!(matches!(c.known(&format!("a{i}"), t0), Known::Unknown));
            assert!(matches!(c.known(&format!("a{}", i + 1), t0), Known::Absent));
        }
        assert_eq!(c.sizes(), (0, MAX_ABSENT));
        // The same name again and again: one entry, a bounded queue.
        for _ in 0..5 * MAX_ABSENT {
            c.learn(t0, "again", None);
            c.forget(Some("again"));
        }
        assert!(c.absent_order.len() <= 2 * MAX_ABSENT + 1);
        // Expired names go as new ones come.
        let later = t0 + ABSENT_TTL;
        c.learn(later, "new", None);
        assert_eq!(c.sizes(), (0, 1));
        c.forget_absent();
        assert!(matches!(c.known("new", later), Known::Unknown));
    }
}
