//! The control plane: reports, operator actions, reload and drain, fanned
//! out to every engine host and gathered back.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::command::{HostCommand, Mailbox, WorkerReport};
use super::stream::guard::StreamGuard;
use super::udp::Drivers;
use crate::engine::Update;

/// How long the control plane waits for one worker's answer.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The control plane's handle on a running server: reports, operator
/// actions, reload and drain. Cheap to clone; talks to every worker.
#[derive(Clone)]
pub struct Control {
    pub(super) workers: Vec<Mailbox>,
    /// The threads of the UDP data plane.
    pub(super) drivers: Arc<Drivers>,
    /// Stream limits, per-IP counts and refusals, shared by stream workers.
    pub(super) streams: Arc<StreamGuard>,
    /// The state every engine shares: per-user counts and revocations.
    pub(super) shared: Arc<crate::engine::ServerState>,
    /// Whether the cluster store answers, with `[cluster]`.
    pub(super) cluster: Option<Arc<crate::cluster::Status>>,
    /// The kernel fast path, with `[fastpath] mode = "on"`.
    pub(super) fastpath: Option<Arc<super::fastpath::FastPath>>,
}

impl Control {
    /// Counters and gauges of the whole server, and its sessions if asked.
    pub async fn report(&self, sessions: bool) -> WorkerReport {
        let mut total = WorkerReport::default();
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.send(HostCommand::Report { sessions, reply }) {
                // A stuck worker must not hang every scrape.
                if let Ok(Ok(r)) = tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                    total.merge(r);
                }
            }
        }
        total.udp_threads = self.drivers.placement().iter().filter(|&&n| n > 0).count() as u64;
        total.udp_batch_threads = self.drivers.batch_threads() as u64;
        total.stream_refusals = self.streams.refusals();
        total.proxy_refusals = self.streams.proxy_refusals();
        total.cluster_up = self.cluster.as_ref().map(|s| s.up());
        total.cluster_nodes = self.cluster.as_ref().map(|s| s.nodes());
        total.revocations_applied = self.shared.revocations_applied();
        if let Some(c) = &self.cluster {
            total.usage_events = c.usage_events();
        }
        if let Some(f) = &self.fastpath {
            use std::sync::atomic::Ordering::Relaxed;
            total.fastpath = super::command::FastpathReport {
                mode: f.mode(),
                packets: [f.packets[0].load(Relaxed), f.packets[1].load(Relaxed)],
                bytes: [f.bytes[0].load(Relaxed), f.bytes[1].load(Relaxed)],
                channels: f.channels.load(Relaxed),
            };
        }
        total
    }

    /// Detach the kernel fast path, if attached: from now on every packet
    /// goes through ferroturn's threads (whose engines hold every channel);
    /// whether it was attached.
    pub fn detach_fastpath(&self) -> bool {
        self.fastpath.as_ref().inspect(|f| f.detach()).is_some()
    }

    /// Close every session of `user`; how many were closed.
    pub async fn close_user(&self, user: &str) -> usize {
        let mut n = 0;
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            let user = user.to_owned();
            if w.send(HostCommand::CloseUser { user, reply }) {
                n += tokio::time::timeout(REPLY_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
            }
        }
        n
    }

    /// Close the session whose relay port is `port`; whether one was.
    pub async fn close_relay_port(&self, port: u16) -> bool {
        let mut closed = false;
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.send(HostCommand::CloseRelayPort { port, reply }) {
                closed |= tokio::time::timeout(REPLY_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(false);
            }
        }
        closed
    }

    /// Apply a reloaded configuration in every worker.
    pub fn update(&self, u: Update) {
        for w in &self.workers {
            w.send(HostCommand::Update(Box::new(u.clone())));
        }
    }

    /// The state every engine shares (the per-user quota's counts, other
    /// nodes' counts and revocations), which the shell feeds.
    pub fn shared(&self) -> &Arc<crate::engine::ServerState> {
        &self.shared
    }

    /// The cluster task's status, with `[cluster]`.
    pub fn cluster_status(&self) -> Option<Arc<crate::cluster::Status>> {
        self.cluster.clone()
    }

    /// Send every worker's cluster lookups to `tx`, and turn them on.
    pub fn cluster_link(&self, tx: tokio::sync::mpsc::Sender<String>) {
        self.broadcast(|| HostCommand::ClusterLink(tx.clone()));
    }

    /// The store's answer for `name`, to every worker.
    pub fn cluster_user(&self, name: &str, user: Option<crate::auth::StaticUser>) {
        self.broadcast(|| HostCommand::ClusterUser {
            name: name.to_owned(),
            user: user.clone(),
        });
    }

    /// The store changed `name` (`None`: maybe any): every worker forgets it.
    pub fn cluster_forget(&self, name: Option<&str>) {
        self.broadcast(|| HostCommand::ClusterForget(name.map(str::to_owned)));
    }

    /// The store was away: every worker forgets the names it lacked.
    pub fn cluster_forget_absent(&self) {
        self.broadcast(|| HostCommand::ClusterForgetAbsent);
    }

    /// The store's REST secrets, to every worker.
    pub fn cluster_secrets(&self, secrets: &[String]) {
        self.broadcast(|| HostCommand::ClusterSecrets(secrets.to_vec()));
    }

    /// Send every worker's usage facts to `link`, and turn them on.
    pub fn usage_link(&self, link: &crate::cluster::usage::Link) {
        self.broadcast(|| HostCommand::UsageLink(link.clone()));
    }

    /// Every worker reports the traffic that moved since its last report.
    pub fn usage_traffic(&self) {
        self.broadcast(|| HostCommand::UsageTraffic);
    }

    /// Load spreading's settings and targets, to every worker.
    pub fn spread(&self, spread: &crate::engine::spread::Spread) {
        self.broadcast(|| HostCommand::Spread(Box::new(spread.clone())));
    }

    fn broadcast(&self, command: impl Fn() -> HostCommand) {
        for w in &self.workers {
            w.send(command());
        }
    }

    /// Refuse new allocations everywhere (see [`crate::engine::Engine::drain`]).
    pub fn drain(&self, alternate: crate::engine::Redirect) {
        if let Some(status) = &self.cluster {
            status.drained();
        }
        for w in &self.workers {
            w.send(HostCommand::Drain(alternate.clone()));
        }
    }
}
