//! What the control plane asks of one engine host, and the mailbox that
//! carries it there.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::poll::EventFd;
use super::stream::guard::Refusal as StreamRefusal;
use super::stream::proxy_header::Refusal as ProxyRefusal;
use crate::auth::StaticUser;
use crate::engine::mobility::{Handoff, Moving};
use crate::engine::{Engine, Gauges, Session, Stats, Update};

/// A request from the control plane to one engine host (a UDP shard or a
/// stream worker).
pub enum HostCommand {
    Report {
        sessions: bool,
        reply: oneshot::Sender<WorkerReport>,
    },
    CloseUser {
        user: String,
        reply: oneshot::Sender<usize>,
    },
    CloseRelayPort {
        port: u16,
        reply: oneshot::Sender<bool>,
    },
    Update(Box<Update>),
    Drain(crate::engine::Redirect),
    /// Names the engine asks the cluster store for go here
    /// ([`crate::engine::Output::LookupUser`]); carried out by the host.
    ClusterLink(mpsc::Sender<String>),
    /// The store's credential of a name, or `None`: it has none.
    ClusterUser {
        name: String,
        user: Option<StaticUser>,
    },
    /// The store changed this name (`None`: maybe any name).
    ClusterForget(Option<String>),
    /// The store was away: names it lacked may exist now.
    ClusterForgetAbsent,
    /// The store's REST secrets.
    ClusterSecrets(Vec<String>),
    /// The mailboxes of every UDP shard, by index (mobility moves go
    /// through them). Carried out by the host.
    Shards(Arc<Vec<Mailbox>>),
    /// Another shard got a Refresh with a ticket for an allocation of this
    /// one (RFC 8016): give it up there. Carried out by the host.
    Surrender(Box<Handoff>),
    /// An allocation another shard gave up, with its relay sockets (IPv4,
    /// IPv6), for the client's new 5-tuple here. Carried out by the host.
    Adopt(Box<(Moving, [Option<std::net::UdpSocket>; 2])>),
    /// Usage facts go here from now on; carried out by the host.
    UsageLink(crate::cluster::usage::Link),
    /// Report the traffic of every allocation whose counts moved.
    UsageTraffic,
    /// Where new Allocates go while draining or loaded (load spreading).
    Spread(Box<crate::engine::spread::Spread>),
}

/// What one worker reports.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub stats: Stats,
    pub gauges: Gauges,
    pub sessions: Vec<Session>,
    /// Packets the shell could not send (socket buffer full).
    pub send_drops: u64,
    pub draining: bool,
    /// Threads driving the UDP data plane now (see [`super::udp::Balance`]).
    pub udp_threads: u64,
    /// Of those threads, how many run under SCHED_BATCH now.
    pub udp_batch_threads: u64,
    /// Stream clients refused or cut short, by [`StreamRefusal`];
    /// server-wide.
    pub stream_refusals: [u64; StreamRefusal::COUNT],
    /// Connections closed on PROXY protocol listeners before they were
    /// served, by [`ProxyRefusal`]; server-wide.
    pub proxy_refusals: [u64; ProxyRefusal::COUNT],
    /// Whether the cluster store answers; `None` without `[cluster]`.
    pub cluster_up: Option<bool>,
    /// Cluster nodes heard from within their expiry, this one included;
    /// `None` without `[cluster]`.
    pub cluster_nodes: Option<u64>,
    /// Revocations this node applied (`ferroturn revoke`, here or on
    /// another node of its cluster).
    pub revocations_applied: u64,
    /// Usage facts by [`crate::cluster::usage::Outcome`] (0 without
    /// `[cluster]`).
    pub usage_events: [u64; crate::cluster::usage::Outcome::COUNT],
    /// The kernel fast path; server-wide.
    pub fastpath: FastpathReport,
}

/// What the kernel fast path relayed and holds (all 0 and `Off` with
/// `[fastpath] mode = "off"`).
#[derive(Debug, Clone, Copy)]
pub struct FastpathReport {
    pub mode: super::fastpath::AttachMode,
    /// By [`crate::engine::stats::Direction`]: packets, bytes of data.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Channels relayed in the kernel now.
    pub channels: u64,
}

impl Default for FastpathReport {
    fn default() -> Self {
        FastpathReport {
            mode: super::fastpath::AttachMode::Off,
            packets: [0; 2],
            bytes: [0; 2],
            channels: 0,
        }
    }
}

impl WorkerReport {
    pub(super) fn merge(&mut self, o: WorkerReport) {
        self.stats.merge(&o.stats);
        self.gauges.merge(&o.gauges);
        self.sessions.extend(o.sessions);
        self.send_drops += o.send_drops;
        self.draining |= o.draining;
    }
}

impl HostCommand {
    /// Carry out this command on a worker's `engine`; `send_drops` is the
    /// worker's count of unsent packets, for a report.
    pub(super) fn carry_out(self, engine: &mut Engine, now: Instant, send_drops: u64) {
        match self {
            HostCommand::Report { sessions, reply } => {
                let _ = reply.send(WorkerReport {
                    stats: engine.stats,
                    gauges: engine.gauges(),
                    sessions: if sessions {
                        engine.sessions(now)
                    } else {
                        Vec::new()
                    },
                    send_drops,
                    draining: engine.draining(),
                    udp_threads: 0,
                    udp_batch_threads: 0,
                    stream_refusals: [0; StreamRefusal::COUNT],
                    proxy_refusals: [0; ProxyRefusal::COUNT],
                    cluster_up: None,
                    cluster_nodes: None,
                    revocations_applied: 0,
                    usage_events: Default::default(),
                    fastpath: FastpathReport::default(),
                });
            }
            HostCommand::CloseUser { user, reply } => {
                let _ = reply.send(engine.close_user(now, &user));
            }
            HostCommand::CloseRelayPort { port, reply } => {
                let _ = reply.send(engine.close_relay_port(now, port));
            }
            HostCommand::Update(u) => engine.update(*u),
            HostCommand::Drain(alternate) => engine.drain(alternate),
            // The host keeps the link ([`super::host::Host::command`]).
            HostCommand::ClusterLink(_) => engine.cluster_on(),
            HostCommand::ClusterUser { name, user } => engine.cluster_user(now, &name, user),
            HostCommand::ClusterForget(name) => engine.cluster_forget(name.as_deref()),
            HostCommand::ClusterForgetAbsent => engine.cluster_forget_absent(),
            HostCommand::ClusterSecrets(secrets) => engine.cluster_secrets(&secrets),
            // The host's own ([`super::host::Host::command`]).
            HostCommand::Shards(_) | HostCommand::Surrender(_) | HostCommand::Adopt(_) => {}
            // The host keeps the link.
            HostCommand::UsageLink(_) => engine.usage_on(),
            HostCommand::UsageTraffic => engine.usage_traffic(now),
            HostCommand::Spread(spread) => engine.set_spread(*spread),
        }
    }
}

/// Where a worker's control-plane commands go: the channel, and for a UDP
/// shard the eventfd that wakes whichever thread drives it (a tokio
/// worker's runtime wakes by itself).
#[derive(Clone)]
pub struct Mailbox {
    tx: mpsc::UnboundedSender<HostCommand>,
    wake: Option<Arc<EventFd>>,
}

impl Mailbox {
    pub(super) fn tokio(tx: mpsc::UnboundedSender<HostCommand>) -> Mailbox {
        Mailbox { tx, wake: None }
    }

    pub(super) fn woken_by(tx: mpsc::UnboundedSender<HostCommand>, wake: Arc<EventFd>) -> Mailbox {
        Mailbox {
            tx,
            wake: Some(wake),
        }
    }

    /// Post `c`; false if the receiver is gone.
    pub(super) fn send(&self, c: HostCommand) -> bool {
        if self.tx.send(c).is_err() {
            return false;
        }
        if let Some(w) = &self.wake {
            w.signal();
        }
        true
    }
}
