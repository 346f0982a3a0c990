//! Prometheus text exposition (format 0.0.4) at `/metrics`.
//!
//! Every figure comes from one [`Control::report`]: counters merged over all
//! workers and gauges taken at the time of the scrape. Labels come from
//! fixed sets only (method, code, reason, direction, transport: the enums
//! of [`crate::engine::stats`], [`StreamRefusal`] and [`ProxyRefusal`], each declared once
//! with its names and order): never a user name or an address, so that the
//! series stay few and say nothing about who uses the server.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::cluster::usage::Outcome as UsageOutcome;
use crate::engine::stats::{
    AuthFailure, Code, DURATION_BUCKETS, Direction, Method as StunMethod, TrafficCount, Transport,
};
use crate::http::{self, Caps, Listener, LocalOnly};
use crate::io::{Control, ProxyRefusal, StreamRefusal, WorkerReport};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections held at once, and per client (IP address or IPv6 /64). A
/// scrape takes milliseconds, so these fill up only with idle sockets,
/// which make room for new connections ([`http::Slots`]).
pub const CAPS: Caps = Caps {
    total: 256,
    per_peer: 64,
};

/// Serve `/metrics` on `listener` until the process ends. Only requests
/// whose `Host` is an IP literal, `localhost` or one of `hosts`
/// (`[metrics] hosts`) are answered, as for the admin API: a web page must
/// not read the server's figures through DNS rebinding.
pub async fn serve(listener: TcpListener, control: Control, hosts: Vec<String>) {
    let router = http::limits(Router::new().fallback(answer).with_state(control)).layer(
        axum::middleware::from_fn_with_state(LocalOnly::new("metrics", hosts), http::check_host),
    );
    http::serve(Listener::Tcp(listener), "metrics", CAPS, None, router).await;
}

async fn answer(State(control): State<Control>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = http::error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match uri.path() {
        "/metrics" => {
            let report = control.report(false).await;
            (
                [
                    (header::CONTENT_TYPE, CONTENT_TYPE),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                render(&report),
            )
                .into_response()
        }
        "/" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "ferroturn: Prometheus metrics at /metrics\n",
        )
            .into_response(),
        p => http::error(
            StatusCode::NOT_FOUND,
            &format!("no page at {p}; metrics are at /metrics"),
        ),
    }
}

/// Writes one metric family at a time: `# HELP`, `# TYPE`, then samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP ferroturn_{name} {help}");
        let _ = writeln!(self.0, "# TYPE ferroturn_{name} {kind}");
    }

    /// A sample; `labels` is empty or `a="x",b="y"` (fixed label values
    /// only, which need no escaping).
    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "ferroturn_{name} {value}");
        } else {
            let _ = writeln!(self.0, "ferroturn_{name}{{{labels}}} {value}");
        }
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// The exposition text of `report`.
pub fn render(report: &WorkerReport) -> String {
    let s = &report.stats;
    let g = &report.gauges;
    let mut o = Out(String::with_capacity(16 * 1024));

    o.family(
        "build_info",
        "gauge",
        "Always 1; the version of the running server.",
    );
    o.sample(
        "build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );

    // Allocations and what they hold.
    o.single(
        "allocations_active",
        "gauge",
        "Allocations alive now.",
        g.allocations,
    );
    o.single(
        "allocations_created_total",
        "counter",
        "Allocations created.",
        s.allocations_created,
    );
    o.single(
        "allocations_expired_total",
        "counter",
        "Allocations that ended because their lifetime ran out.",
        s.allocations_expired,
    );
    o.single(
        "allocations_deleted_total",
        "counter",
        "Allocations deleted by Refresh 0, a closed connection, an operator or shutdown.",
        s.allocations_deleted,
    );
    o.single(
        "mobility_moves_total",
        "counter",
        "Allocations moved to a new client address with a MOBILITY-TICKET (RFC 8016).",
        s.mobility_moves,
    );
    o.single(
        "permissions_active",
        "gauge",
        "Permissions installed now, over all allocations.",
        g.permissions,
    );
    o.single(
        "channels_active",
        "gauge",
        "Channels bound now, over all allocations.",
        g.channels,
    );
    o.single(
        "tcp_allocations_active",
        "gauge",
        "TCP allocations (RFC 6062) alive now: their relayed address is a TCP listener.",
        g.tcp_allocations,
    );
    o.family(
        "tcp_peer_connections",
        "gauge",
        "Peer connections of TCP allocations now, by state: waiting (connecting, or waiting for their ConnectionBind) or bound to a client data connection.",
    );
    o.sample(
        "tcp_peer_connections",
        "state=\"waiting\"",
        g.peer_connections_waiting,
    );
    o.sample(
        "tcp_peer_connections",
        "state=\"bound\"",
        g.peer_connections_bound,
    );
    o.family(
        "tcp_relayed_bytes_total",
        "counter",
        "Bytes relayed between the data and peer connections of TCP allocations, by direction, for the whole server.",
    );
    for d in Direction::ALL {
        let labels = format!("{}=\"{}\"", Direction::KEY, d.name());
        o.sample(
            "tcp_relayed_bytes_total",
            &labels,
            g.tcp_relayed_bytes[d.index()],
        );
    }
    o.single(
        "relay_ports_free",
        "gauge",
        "Relay ports not in use.",
        g.free_ports,
    );
    o.single(
        "draining",
        "gauge",
        "1 while the server drains (SIGTERM): new allocations are refused.",
        u64::from(report.draining),
    );

    // Requests, errors, authentication.
    o.family(
        "requests_total",
        "counter",
        "STUN requests (and Send indications) received, by method.",
    );
    for m in StunMethod::ALL {
        let labels = format!("{}=\"{}\"", StunMethod::KEY, m.name());
        o.sample("requests_total", &labels, s.requests[m.index()]);
    }
    o.family(
        "error_responses_total",
        "counter",
        "Error responses sent, by method and error code.",
    );
    for m in StunMethod::ALL {
        for c in Code::ALL {
            let labels = format!(
                "{}=\"{}\",{}=\"{}\"",
                StunMethod::KEY,
                m.name(),
                Code::KEY,
                c.name()
            );
            o.sample(
                "error_responses_total",
                &labels,
                s.errors[m.index()][c.index()],
            );
        }
    }
    o.family(
        "auth_failures_total",
        "counter",
        "Failed authentications, by reason.",
    );
    for r in AuthFailure::ALL {
        let labels = format!("{}=\"{}\"", AuthFailure::KEY, r.name());
        o.sample("auth_failures_total", &labels, s.auth_failures[r.index()]);
    }
    o.single(
        "peer_policy_denials_total",
        "counter",
        "Peer addresses refused by the peer policy (403, or Send indications dropped).",
        s.policy_denials,
    );
    o.single(
        "quota_rejections_total",
        "counter",
        "Allocations, permissions or channels refused by a quota (486, 508).",
        s.quota_rejections,
    );
    o.single(
        "unauthenticated_answers_suppressed_total",
        "counter",
        "Answers to unauthenticated requests not sent: the source was over its rate.",
        s.answers_suppressed,
    );
    o.single(
        "malformed_packets_total",
        "counter",
        "Packets that were neither valid STUN nor ChannelData, dropped.",
        s.malformed,
    );

    // Relayed traffic.
    for (name, help, get) in [
        (
            "relayed_packets_total",
            "Packets relayed, by direction and client transport.",
            (|t: &TrafficCount| t.packets) as fn(&_) -> u64,
        ),
        (
            "relayed_bytes_total",
            "Payload bytes relayed, by direction and client transport.",
            |t| t.bytes,
        ),
    ] {
        o.family(name, "counter", help);
        for d in Direction::ALL {
            for t in Transport::ALL {
                let labels = format!(
                    "{}=\"{}\",{}=\"{}\"",
                    Direction::KEY,
                    d.name(),
                    Transport::KEY,
                    t.name()
                );
                o.sample(name, &labels, get(&s.relayed[d.index()][t.index()]));
            }
        }
    }
    o.single(
        "rate_limited_packets_total",
        "counter",
        "Data packets dropped by an allocation's bandwidth or packet ceiling.",
        s.rate_limited,
    );
    o.single(
        "undeliverable_packets_total",
        "counter",
        "Data packets dropped: no allocation, channel or permission for them.",
        s.dropped,
    );
    o.single(
        "send_drops_total",
        "counter",
        "Packets the server could not send (socket buffer full).",
        report.send_drops,
    );

    o.family(
        "stream_refusals_total",
        "counter",
        "TCP/TLS clients refused, closed or dropped by a stream limit, by reason.",
    );
    for r in StreamRefusal::ALL {
        let labels = format!("{}=\"{}\"", StreamRefusal::KEY, r.name());
        o.sample(
            "stream_refusals_total",
            &labels,
            report.stream_refusals[r.index()],
        );
    }

    o.family(
        "proxy_header_refusals_total",
        "counter",
        "Connections to PROXY protocol listeners closed before they were served: from outside proxy_from, a malformed header, or none within 5 s; by reason.",
    );
    for r in ProxyRefusal::ALL {
        let labels = format!("{}=\"{}\"", ProxyRefusal::KEY, r.name());
        o.sample(
            "proxy_header_refusals_total",
            &labels,
            report.proxy_refusals[r.index()],
        );
    }

    o.single(
        "udp_threads",
        "gauge",
        "Threads driving the UDP data plane now: one at low load, up to one per worker.",
        report.udp_threads,
    );
    o.single(
        "udp_batch_threads",
        "gauge",
        "UDP data-plane threads under SCHED_BATCH now (udp_scheduling).",
        report.udp_batch_threads,
    );
    if let Some(up) = report.cluster_up {
        o.single(
            "cluster_up",
            "gauge",
            "1 while this node's cluster store (Redis, [cluster]) answers, else 0; absent without [cluster].",
            u64::from(up),
        );
    }
    o.single(
        "revocations_applied_total",
        "counter",
        "Revocations this node applied: `ferroturn revoke` here, or on another node of its cluster.",
        report.revocations_applied,
    );
    o.family(
        "usage_events_total",
        "counter",
        "Usage events (allocation created, refreshed, traffic, deleted) this node published to its cluster's Redis, or dropped: its queue full or Redis away; 0 without [cluster].",
    );
    for outcome in UsageOutcome::ALL {
        let labels = format!("{}=\"{}\"", UsageOutcome::KEY, outcome.name());
        o.sample(
            "usage_events_total",
            &labels,
            report.usage_events[outcome.index()],
        );
    }
    if let Some(nodes) = report.cluster_nodes {
        o.single(
            "cluster_nodes",
            "gauge",
            "Cluster nodes this one has heard from within their expiry (3 heartbeats), itself included; absent without [cluster].",
            nodes,
        );
        o.single(
            "redirects_total",
            "counter",
            "New Allocates sent to another cluster node (300 Try Alternate) because this node drains or is loaded above cluster.redirect_above; absent without [cluster].",
            s.redirects,
        );
    }

    // The kernel fast path (README "Kernel fast path"): always exported,
    // 0 and mode "off" without it.
    let f = &report.fastpath;
    o.family(
        "fastpath_attached",
        "gauge",
        "1 for how the kernel fast path's XDP program runs (native: in the driver; generic: in the stack; off: not attached).",
    );
    for m in crate::io::fastpath::AttachMode::ALL {
        let labels = format!("mode=\"{}\"", m.name());
        o.sample("fastpath_attached", &labels, (f.mode == m) as u64);
    }
    o.single(
        "fastpath_channels",
        "gauge",
        "Channel bindings relayed in the kernel now (bound by UDP clients, same-family peers, live permissions).",
        f.channels,
    );
    o.family(
        "fastpath_relayed_packets_total",
        "counter",
        "Packets the kernel fast path relayed, by direction (also counted in relayed_packets_total).",
    );
    for dir in Direction::ALL {
        let labels = format!("{}=\"{}\"", Direction::KEY, dir.name());
        o.sample(
            "fastpath_relayed_packets_total",
            &labels,
            f.packets[dir.index()],
        );
    }
    o.family(
        "fastpath_relayed_bytes_total",
        "counter",
        "Bytes of application data the kernel fast path relayed, by direction (also counted in relayed_bytes_total).",
    );
    for dir in Direction::ALL {
        let labels = format!("{}=\"{}\"", Direction::KEY, dir.name());
        o.sample(
            "fastpath_relayed_bytes_total",
            &labels,
            f.bytes[dir.index()],
        );
    }

    // Session durations.
    let h = &s.session_seconds;
    let name = "session_duration_seconds";
    o.family(
        name,
        "histogram",
        "How long allocations lived, counted when they end.",
    );
    let mut cumulative = 0;
    for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        o.sample(
            &format!("{name}_bucket"),
            &format!("le=\"{bound}\""),
            cumulative,
        );
    }
    o.sample(&format!("{name}_bucket"), "le=\"+Inf\"", h.count);
    o.sample(&format!("{name}_sum"), "", h.sum_seconds);
    o.sample(&format!("{name}_count"), "", h.count);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_every_family_with_help_type_and_values() {
        let mut r = WorkerReport::default();
        r.gauges.allocations = 3;
        r.gauges.free_ports = 97;
        r.stats.allocations_created = 5;
        r.stats.auth_failures[5] = 2;
        r.stats.requests[1] = 9;
        r.stats.errors[1][2] = 1;
        r.stats.relayed[1][1].add(100);
        r.stats.session_seconds.observe(5);
        r.stats.session_seconds.observe(700);
        r.stats.session_seconds.observe(100_000);
        r.draining = true;
        r.stream_refusals[4] = 7;
        let t = render(&r);
        // Only with [cluster].
        assert_eq!(value(&t, "ferroturn_cluster_up"), None);
        for up in [false, true] {
            r.cluster_up = Some(up);
            assert_eq!(
                value(&render(&r), "ferroturn_cluster_up"),
                Some(u64::from(up))
            );
        }
        assert_eq!(value(&t, "ferroturn_cluster_nodes"), None);
        r.cluster_nodes = Some(3);
        r.revocations_applied = 2;
        let c = render(&r);
        assert_eq!(value(&c, "ferroturn_cluster_nodes"), Some(3));
        assert_eq!(value(&c, "ferroturn_revocations_applied_total"), Some(2));
        assert_eq!(value(&c, "ferroturn_redirects_total"), Some(0));
        assert_eq!(value(&t, "ferroturn_redirects_total"), None);

        assert_eq!(value(&t, "ferroturn_allocations_active"), Some(3));
        assert_eq!(value(&t, "ferroturn_relay_ports_free"), Some(97));
        assert_eq!(value(&t, "ferroturn_allocations_created_total"), Some(5));
        assert_eq!(value(&t, "ferroturn_draining"), Some(1));
        assert_eq!(
            value(&t, "ferroturn_stream_refusals_total{reason=\"queue_full\"}"),
            Some(7)
        );
        assert_eq!(
            value(
                &t,
                "ferroturn_auth_failures_total{reason=\"bad_integrity\"}"
            ),
            Some(2)
        );
        assert_eq!(
            value(&t, "ferroturn_requests_total{method=\"allocate\"}"),
            Some(9)
        );
        assert_eq!(
            value(
                &t,
                "ferroturn_error_responses_total{method=\"allocate\",code=\"401\"}"
            ),
            Some(1)
        );
        let to_client_tcp = "{direction=\"to_client\",transport=\"tcp\"}";
        assert_eq!(
            value(
                &t,
                &format!("ferroturn_relayed_packets_total{to_client_tcp}")
            ),
            Some(1)
        );
        assert_eq!(
            value(&t, &format!("ferroturn_relayed_bytes_total{to_client_tcp}")),
            Some(100)
        );
        // Cumulative buckets; +Inf counts what no bucket holds.
        let b = |le: &str| {
            value(
                &t,
                &format!("ferroturn_session_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("10"), Some(1));
        assert_eq!(b("600"), Some(1));
        assert_eq!(b("1800"), Some(2));
        assert_eq!(b("21600"), Some(2));
        assert_eq!(b("+Inf"), Some(3));
        assert_eq!(
            value(&t, "ferroturn_session_duration_seconds_sum"),
            Some(100_705)
        );
        assert_eq!(
            value(&t, "ferroturn_session_duration_seconds_count"),
            Some(3)
        );

        // Format: every sample belongs to a family declared just before
        // with HELP and TYPE; counters end in _total; names are prefixed.
        let mut declared: Option<(String, String)> = None;
        let mut families = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(families.insert(name.to_owned()), "{name} declared twice");
                declared = Some((name.to_owned(), String::new()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let d = declared.as_mut().unwrap();
                assert_eq!(d.0, name);
                d.1 = kind.to_owned();
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else {
                let (name, _) = line.split_once(['{', ' ']).unwrap();
                assert!(name.starts_with("ferroturn_"), "{line}");
                let (family, kind) = declared.as_ref().unwrap();
                let ok = name == family
                    || (kind == "histogram"
                        && [
                            &format!("{family}_bucket"),
                            &format!("{family}_sum"),
                            &format!("{family}_count"),
                        ]
                        .contains(&&name.to_owned()));
                assert!(ok, "sample {line} outside its family {family}");
                let v = line.rsplit(' ').next().unwrap();
                assert!(v.parse::<u64>().is_ok(), "{line}");
            }
        }
        assert!(t.ends_with('\n'));
    }
}
