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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::addr::ClientAddr;
use crate::auth::{Key, StaticUser, rest_password};

/// Users one engine keeps; beyond, an arbitrary one is forgotten (and
/// looked up again when next used). Each costs its name, both keys (48
/// bytes) and the map's overhead: about 16 MB for names of 64 bytes.
pub const MAX_USERS: usize = 65_536;

/// Names known to be absent one engine keeps; beyond, the expired ones go,
/// then arbitrary ones. A USERNAME is at most 763 bytes (RFC 8489 §14.3),
/// so this holds at most about 3.3 MB of names.
pub const MAX_ABSENT: usize = 4096;

/// How long a name stays known to be absent without news from the store
/// (the store's notifications forget it sooner): while it does, requests
/// under it cost no lookup.
pub const ABSENT_TTL: Duration = Duration::from_secs(10);

/// Requests one engine holds while their users are looked up; beyond,
/// a request is answered as an unknown user's at once.
pub const MAX_PARKED: usize = 64;

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
    /// Names the store does not have, until when that is believed.
    absent: HashMap<String, Instant>,
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
            Some(&until) if until > now => Known::Absent,
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
                if self.absent.len() >= MAX_ABSENT {
                    self.absent.retain(|_, &mut until| until > now);
                }
                if self.absent.len() >= MAX_ABSENT
                    && let Some(k) = self.absent.keys().next().cloned()
                {
                    self.absent.remove(&k);
                }
                self.absent.insert(name.to_owned(), now + ABSENT_TTL);
            }
        }
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
                self.absent = HashMap::new();
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

    /// Hold a request for `name`; false when [`MAX_PARKED`] are held.
    /// Whether the shell must be asked is [`Self::waiting_for`] before.
    pub fn park(&mut self, now: Instant, client: ClientAddr, packet: &[u8], name: &str) -> bool {
        if self.parked.len() >= MAX_PARKED {
            return false;
        }
        self.parked.push(Parked {
            client,
            packet: packet.to_vec(),
            name: name.to_owned(),
            deadline: now + PARK_TIMEOUT,
        });
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
}
