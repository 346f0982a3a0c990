//! Load spreading: every node publishes its load and the addresses other
//! nodes may send clients to; each node picks, per address family and
//! client transport, the least-loaded other node that can take more, and
//! hands that choice to its engines, which answer new Allocates with 300
//! Try Alternate (RFC 8489 §10, RFC 8656 §7.2) naming it while this node
//! drains or is loaded above `cluster.redirect_above`.
//!
//! A node's row is `ferroturn/realm/<realm>/node/<node>/load`: the JSON
//! of [`Advert`], set with the node's expiry (three heartbeats) at every
//! heartbeat and whenever the load changes (at most every
//! [`PUBLISH_GAP`]), each time also published on the events channel as
//! `load NODE JSON`. Another node counts it until that expiry runs out
//! without a newer one.
//!
//! Rules that keep clients from going round in circles: a node is a target
//! only if it was heard within its expiry, is not this node, is not
//! draining and is loaded strictly below the threshold; so a node sends
//! clients only to nodes that would not send them on, and when every other
//! node is as loaded, it serves (or refuses, when full) itself.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::ServerState;
use crate::engine::ports::Relay;
use crate::engine::spread::{Spread, Target, Targets};
use crate::engine::stats::Transport;

/// The shortest time between two publications of a changed load; a change
/// within it is published when it ends (so a burst is seen within about
/// this plus a Redis round trip).
pub const PUBLISH_GAP: Duration = Duration::from_millis(250);

/// The longest `load` message or row read from another node; a longer one
/// is ignored.
pub const MAX_ADVERT_BYTES: usize = 2048;

/// Entries of `cluster.advertise`: one per family and transport.
pub const MAX_ADVERTISED: usize = 2 * Transport::COUNT;

/// One `cluster.advertise` entry: a transport and the `IP:PORT` where this
/// node takes clients of it, written `udp:203.0.113.5:3478`,
/// `tcp:[2001:db8::5]:3478`, `tls:203.0.113.5:5349`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    pub transport: Transport,
    pub address: SocketAddr,
}

impl Advertised {
    pub fn parse(s: &str) -> Result<Advertised, String> {
        let bad = || {
            format!("{s:?} is not TRANSPORT:IP:PORT (udp, tcp or tls; an IPv6 address in brackets)")
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let transport = match kind {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => return Err(bad()),
        };
        let address: SocketAddr = rest.parse().map_err(|_| bad())?;
        if address.ip().is_unspecified() || address.port() == 0 {
            return Err(format!(
                "{s:?}: a client cannot be sent to an unspecified address or port 0"
            ));
        }
        Ok(Advertised { transport, address })
    }

    fn v6(&self) -> bool {
        self.address.is_ipv6()
    }
}

impl fmt::Display for Advertised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport.name(), self.address)
    }
}

/// `cluster.redirect_above`: a load fraction in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub f64);

// A threshold is never NaN (`check` takes only (0, 1]).
impl Eq for Threshold {}

/// The one entry each family and transport may have: the first
/// duplicate, if any.
pub fn duplicate(list: &[Advertised]) -> Option<Advertised> {
    list.iter()
        .enumerate()
        .find(|(i, a)| {
            list[..*i]
                .iter()
                .any(|b| b.transport == a.transport && b.v6() == a.v6())
        })
        .map(|(_, a)| *a)
}

/// `cluster.advertise` when left out: each TURN `[[listen]]` entry on a
/// specific address and not behind a PROXY protocol balancer, per
/// transport it takes (the first of each family and transport).
pub fn from_listeners(listen: &[crate::config::Listen]) -> Vec<Advertised> {
    let mut list: Vec<Advertised> = Vec::new();
    for l in listen {
        if !l.turn || l.address.ip().is_unspecified() || l.proxy_from.is_some() {
            continue;
        }
        let kinds = [
            (l.udp, Transport::Udp),
            (l.tcp && !l.tls, Transport::Tcp),
            (l.tls, Transport::Tls),
        ];
        for (on, transport) in kinds {
            let a = Advertised {
                transport,
                address: l.address,
            };
            let taken = list
                .iter()
                .any(|b| b.transport == transport && b.v6() == a.v6());
            if on && !taken {
                list.push(a);
            }
        }
    }
    list
}

/// What a node publishes of itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Advert {
    /// Relay ports held (an allocation holds one, a dual-stack one two).
    pub allocations: u32,
    pub free_ports: u64,
    /// The larger of allocations ÷ capacity and 1 − free ports ÷ range.
    pub load: f64,
    pub draining: bool,
    /// `cluster.advertise`, as written (`udp:IP:PORT`…).
    pub advertise: Vec<String>,
    /// `cluster.advertise_tls_name`: ALTERNATE-DOMAIN for TLS clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
}

impl Advert {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Another node's advert as published; `None` if too long or not one.
    pub fn read(text: &str) -> Option<Advert> {
        if text.len() > MAX_ADVERT_BYTES {
            return None;
        }
        let a: Advert = serde_json::from_str(text).ok()?;
        (a.load.is_finite() && a.advertise.len() <= MAX_ADVERTISED).then_some(a)
    }
}

/// One other node's last advert, and until when it counts.
struct Heard {
    advert: Advert,
    targets: Vec<Advertised>,
    until: Instant,
}

/// What this node knows of the others' loads, and what it last chose.
pub struct Loads {
    me: String,
    expiry: Duration,
    /// `cluster.redirect_above`: a target must be below it (below 1
    /// without one: a draining node still sends clients to nodes with room).
    below: f64,
    nodes: HashMap<String, Heard>,
}

impl Loads {
    pub fn new(me: &str, expiry: Duration, redirect_above: Option<f64>) -> Loads {
        Loads {
            me: me.to_owned(),
            expiry,
            below: redirect_above.unwrap_or(1.0),
            nodes: HashMap::new(),
        }
    }

    /// `node`'s advert, heard now (a message) or read with `ttl` left
    /// (its row); false if ignored: this node, or one too many.
    pub fn heard(
        &mut self,
        node: &str,
        advert: Advert,
        ttl: Option<Duration>,
        now: Instant,
    ) -> bool {
        if node == self.me {
            return false;
        }
        if !self.nodes.contains_key(node) && self.nodes.len() >= super::nodes::MAX_NODES {
            return false;
        }
        let until = now + ttl.unwrap_or(self.expiry).min(self.expiry);
        let targets = advert
            .advertise
            .iter()
            .filter_map(|a| Advertised::parse(a).ok())
            .collect();
        match self.nodes.get_mut(node) {
            // A row read later than a message may be older than it.
            Some(h) if ttl.is_some() && h.until > until => {}
            Some(h) => {
                *h = Heard {
                    advert,
                    targets,
                    until,
                }
            }
            None => {
                self.nodes.insert(
                    node.to_owned(),
                    Heard {
                        advert,
                        targets,
                        until,
                    },
                );
            }
        }
        true
    }

    /// Forget the nodes not heard from within their expiry.
    pub fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, h| h.until > now);
    }

    /// Per family and transport, the live node with the lowest load below
    /// the threshold, not draining (ties: the first name).
    pub fn targets(&self, now: Instant) -> Targets {
        let mut best: HashMap<(bool, usize), (f64, &str, Target)> = HashMap::new();
        for (name, h) in &self.nodes {
            let a = &h.advert;
            if h.until <= now || a.draining || a.load >= self.below {
                continue;
            }
            for t in &h.targets {
                let key = (t.v6(), t.transport.index());
                let better = match best.get(&key) {
                    None => true,
                    Some((load, other, _)) => (a.load, name.as_str()) < (*load, *other),
                };
                if better {
                    let domain = match t.transport {
                        Transport::Tls => a.tls_name.clone(),
                        _ => None,
                    };
                    let target = Target {
                        address: t.address,
                        domain,
                    };
                    best.insert(key, (a.load, name, target));
                }
            }
        }
        let mut targets = Targets::default();
        for ((v6, i), (_, _, target)) in best {
            targets.set(v6, Transport::ALL[i], Some(target));
        }
        targets
    }
}

/// This node's side of load spreading: what it publishes of itself, what
/// it heard of the others, and what it last handed its engines.
pub struct Spreading {
    pub loads: Loads,
    /// The engines' settings; `targets` as last handed over.
    engines: Spread,
    advertise: Vec<String>,
    tls_name: Option<String>,
    relays: usize,
    /// What was last published, and when.
    published: Option<(Advert, Instant)>,
}

impl Spreading {
    pub fn new(config: &crate::config::Config, expiry: Duration) -> Option<Spreading> {
        let c = config.restart.cluster.as_ref()?;
        let relay = &config.restart.relay;
        let range = (u32::from(relay.ports.1 - relay.ports.0) + 1) * relay.count() as u32;
        let above = c.redirect_above.map(|t| t.0);
        Some(Spreading {
            loads: Loads::new(&c.node, expiry, above),
            engines: Spread {
                above,
                capacity: config.live.limits.total_allocations,
                range,
                targets: Targets::default(),
            },
            advertise: c.advertise.iter().map(ToString::to_string).collect(),
            tls_name: c.advertise_tls_name.clone(),
            relays: relay.count().min(crate::engine::ports::MAX_RELAYS),
            published: None,
        })
    }

    /// This node's load now, from the counters every engine shares.
    pub fn advert(&self, shared: &ServerState, draining: bool) -> Advert {
        let held = shared.total();
        let free: usize = (0..self.relays)
            .map(|i| shared.ports.free(Relay(i as u8)))
            .sum();
        let e = &self.engines;
        Advert {
            allocations: held,
            free_ports: free as u64,
            load: crate::engine::spread::load(held, e.capacity, free, e.range),
            draining,
            advertise: self.advertise.clone(),
            tls_name: self.tls_name.clone(),
        }
    }

    /// The advert to publish now, if any: at every heartbeat (`beat`), and
    /// when the load changed, at most every [`PUBLISH_GAP`].
    pub fn due(
        &mut self,
        shared: &ServerState,
        draining: bool,
        beat: bool,
        now: Instant,
    ) -> Option<String> {
        let advert = self.advert(shared, draining);
        if !beat
            && let Some((last, at)) = &self.published
            && (*last == advert || now.duration_since(*at) < PUBLISH_GAP)
        {
            return None;
        }
        let json = advert.json();
        self.published = Some((advert, now));
        Some(json)
    }

    /// Hand the engines the current choice of targets, if it changed.
    pub fn refresh(&mut self, control: &crate::io::Control, now: Instant) {
        self.loads.expire(now);
        let targets = self.loads.targets(now);
        if targets != self.engines.targets {
            self.engines.targets = targets;
            control.spread(&self.engines);
        }
    }

    /// The engines' settings as they have them.
    pub fn engines(&self) -> &Spread {
        &self.engines
    }
}

/// Read the load rows of every other node with their time to live; what
/// was read goes to `done` (nothing on an error: the next heartbeat tries
/// again). A row that is no [`Advert`] is left out.
pub async fn read_loads(
    mut conn: redis::aio::MultiplexedConnection,
    keys: super::nodes::Keys,
    node: String,
    done: tokio::sync::mpsc::UnboundedSender<Vec<(String, Advert, Duration)>>,
) {
    let read = super::read_others::<Option<String>>(
        &mut conn,
        &keys,
        &node,
        super::nodes::Keys::load,
        |p, k| {
            p.get(k);
        },
    );
    if let Ok(Ok(rows)) = tokio::time::timeout(super::COMMAND_TIMEOUT, read).await {
        let adverts = rows
            .into_iter()
            .filter_map(|(n, text, ttl)| Some((n, Advert::read(&text?)?, ttl)))
            .collect();
        let _ = done.send(adverts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(load: f64, draining: bool, advertise: &[&str]) -> Advert {
        Advert {
            allocations: 0,
            free_ports: 0,
            load,
            draining,
            advertise: advertise.iter().map(|s| s.to_string()).collect(),
            tls_name: Some("turn.example.org".into()),
        }
    }

    fn at(t: &Targets, v6: bool, transport: Transport) -> Option<SocketAddr> {
        t.get(v6, transport).map(|t| t.address)
    }

    #[test]
    fn entries_parse_and_print() {
        for s in [
            "udp:203.0.113.5:3478",
            "tcp:[2001:db8::5]:3478",
            "tls:203.0.113.5:5349",
        ] {
            assert_eq!(Advertised::parse(s).unwrap().to_string(), s);
        }
        for s in [
            "udp:0.0.0.0:3478",
            "udp:[::]:3478",
            "udp:203.0.113.5:0",
            "sctp:203.0.113.5:3478",
            "203.0.113.5:3478",
            "udp:2001:db8::5:3478",
            "udp:turn.example.org:3478",
        ] {
            assert!(Advertised::parse(s).is_err(), "{s}");
        }
        let list: Vec<_> = [
            "udp:192.0.2.1:3478",
            "udp:[2001:db8::1]:3478",
            "udp:192.0.2.2:3478",
        ]
        .iter()
        .map(|s| Advertised::parse(s).unwrap())
        .collect();
        assert_eq!(duplicate(&list), Some(list[2]));
        assert_eq!(duplicate(&list[..2]), None);
    }

    #[test]
    fn the_least_loaded_live_node_below_the_threshold_of_the_same_family() {
        let t0 = Instant::now();
        let mut l = Loads::new("a", Duration::from_secs(3), Some(0.5));
        let both = ["udp:127.0.0.2:3478", "udp:[::2]:3478", "tls:127.0.0.2:5349"];
        assert!(!l.heard("a", advert(0.0, false, &both), None, t0), "itself");
        l.heard("b", advert(0.4, false, &both), None, t0);
        l.heard("c", advert(0.1, false, &["udp:127.0.0.3:3478"]), None, t0);
        let t = l.targets(t0);
        assert_eq!(
            at(&t, false, Transport::Udp),
            Some("127.0.0.3:3478".parse().unwrap())
        );
        // Only b has IPv6 and TLS; TLS carries b's name.
        assert_eq!(
            at(&t, true, Transport::Udp),
            Some("[::2]:3478".parse().unwrap())
        );
        assert_eq!(
            t.get(false, Transport::Tls).unwrap().domain.as_deref(),
            Some("turn.example.org")
        );
        assert_eq!(at(&t, false, Transport::Tcp), None);
        // c fills up to the threshold: not a target any more (no ping-pong).
        l.heard("c", advert(0.5, false, &["udp:127.0.0.3:3478"]), None, t0);
        assert_eq!(
            at(&l.targets(t0), false, Transport::Udp),
            Some("127.0.0.2:3478".parse().unwrap())
        );
        // b drains: nothing left.
        l.heard("b", advert(0.0, true, &both), None, t0);
        assert!(l.targets(t0).is_empty());
    }

    #[test]
    fn a_node_not_heard_within_its_expiry_is_no_target() {
        let t0 = Instant::now();
        let mut l = Loads::new("a", Duration::from_secs(3), Some(0.9));
        l.heard("b", advert(0.0, false, &["udp:127.0.0.2:3478"]), None, t0);
        // A row read with 1 s left lives no longer than that.
        l.heard(
            "c",
            advert(0.0, false, &["udp:127.0.0.3:3478"]),
            Some(Duration::from_secs(1)),
            t0,
        );
        assert_eq!(
            at(&l.targets(t0), false, Transport::Udp),
            Some("127.0.0.2:3478".parse().unwrap())
        );
        let later = t0 + Duration::from_secs(2);
        l.expire(later);
        l.heard(
            "b",
            advert(0.5, false, &["udp:127.0.0.2:3478"]),
            None,
            later,
        );
        assert_eq!(
            at(&l.targets(later), false, Transport::Udp),
            Some("127.0.0.2:3478".parse().unwrap()),
            "c expired"
        );
        assert!(l.targets(later + Duration::from_secs(3)).is_empty());
    }

    #[test]
    fn adverts_are_bounded() {
        let long = advert(0.0, false, &[&"x".repeat(MAX_ADVERT_BYTES)]).json();
        assert_eq!(Advert::read(&long), None);
        let a = advert(0.25, true, &["udp:127.0.0.2:3478"]);
        assert_eq!(Advert::read(&a.json()), Some(a));
        assert_eq!(Advert::read("{\"load\": 1}"), None);
        let t0 = Instant::now();
        let mut l = Loads::new("a", Duration::from_secs(3), None);
        for i in 0..super::super::nodes::MAX_NODES + 3 {
            l.heard(&format!("n{i}"), advert(0.0, false, &[]), None, t0);
        }
        assert_eq!(l.nodes.len(), super::super::nodes::MAX_NODES);
    }
}
