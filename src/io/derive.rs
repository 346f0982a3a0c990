//! What the server derives from a [`Config`] for its engines: the peer
//! policy on this host, and the settings a reload changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Credentials;
use crate::config::{Config, DefaultFamily};
use crate::engine::{EngineConfig, NatSockets, ServerState, Update};
use crate::policy::PeerPolicy;

/// The settings of one engine of a server running `config`: `live` its
/// live settings ([`update_from`]), `shared` the state all its engines
/// share (quotas, the relay port pool, which is why `ports` stays empty),
/// `seed` this engine's own randomness, `stun_only` the listeners that
/// answer STUN alone, and `nat` the sockets of NAT behaviour discovery.
pub(super) fn engine_config(
    config: &Config,
    live: &Update,
    stun_only: &[u16],
    nat: Option<NatSockets>,
    shared: &Arc<ServerState>,
    seed: u64,
) -> EngineConfig {
    let relay = &config.restart.relay;
    EngineConfig {
        live: live.clone(),
        relay_bind: relay.address,
        relay_public: relay.public_address,
        relay_bind_v6: relay.address_v6,
        relay_public_v6: relay.public_address_v6,
        more_relays: relay.more.clone(),
        same_family_default: relay.default_family == DefaultFamily::SameAsClient,
        ports: Vec::new(),
        seed,
        stun_only: stun_only.to_vec(),
        nat_behaviour: nat,
        shared: shared.clone(),
        // Set by the server per engine ([`super::server`]).
        shard: 0,
        ticket_key: [0; 32],
    }
}

/// The engines' live settings of `config`: what they start with, and what
/// a reload sends them. Its realm is the running one (a restart-only
/// setting): keys and nonces depend on it.
pub(super) fn update_from(
    config: &Config,
    nonce_secret: &[u8],
    own: &[std::net::IpAddr],
) -> Update {
    let live = &config.live;
    Update {
        credentials: Credentials::new(
            &config.restart.realm,
            &live.secrets,
            &live.users,
            nonce_secret,
            live.nonce_lifetime,
        ),
        policy: policy_from(config, own),
        limits: live.limits,
        strict_expiry: live.strict_expiry,
        expiry_grace: Duration::from_secs(live.expiry_grace),
        lifetime: Duration::from_secs(live.allocation.lifetime.into()),
        max_lifetime: Duration::from_secs(live.allocation.max_lifetime.into()),
        permission_lifetime: Duration::from_secs(live.allocation.permission_lifetime.into()),
        channel_lifetime: Duration::from_secs(live.allocation.channel_lifetime.into()),
        legacy_channels: live.allocation.legacy_channel_numbers,
        mobility: live.allocation.mobility,
    }
}

/// The peer policy of `config` on this host: its relay addresses (where a
/// live relay port is a peer), every listening socket of the server, which
/// no peer may be, and `own`, the interfaces' addresses as last read.
pub(super) fn policy_from(config: &Config, own: &[std::net::IpAddr]) -> PeerPolicy {
    let r = &config.restart.relay;
    let mut relays = vec![r.public_address, r.address];
    relays.extend(r.public_address_v6);
    relays.extend(r.address_v6);
    relays.extend(
        r.more
            .iter()
            .flat_map(|m| [Some(m.public), Some(m.bind), m.public_v6, m.bind_v6])
            .flatten(),
    );
    let restart = &config.restart;
    let mut listeners: Vec<SocketAddr> = restart.listen.iter().map(|l| l.address).collect();
    listeners.extend(nat_addresses(config).into_iter().flatten());
    listeners.extend(restart.metrics.as_ref().map(|m| m.address));
    listeners.extend(restart.admin.as_ref().and_then(|a| a.address));
    // Closed whether or not `ferroturn demo` runs it.
    listeners.push(config.live.demo.address);
    PeerPolicy::new(
        config.live.allow.clone(),
        config.live.deny.clone(),
        relays,
        r.ports,
    )
    .with_listeners(listeners)
    .with_own_addresses(own.iter().copied())
}

/// The addresses of the three sockets `[nat_behaviour]` adds to its
/// primary listener (whose port, if 0 in the file, is `primary_port`):
/// the primary address with the other port, the other address with the
/// primary port, the other address with the other port.
pub(super) fn nat_addresses_on(config: &Config, primary_port: u16) -> Option<[SocketAddr; 3]> {
    let n = config.restart.nat_behaviour?;
    let primary = config.restart.listen.get(n.listen)?.address.ip();
    Some([
        SocketAddr::new(primary, n.other_port),
        SocketAddr::new(n.other_address, primary_port),
        SocketAddr::new(n.other_address, n.other_port),
    ])
}

/// [`nat_addresses_on`] with the primary port as the file gives it.
fn nat_addresses(config: &Config) -> Option<[SocketAddr; 3]> {
    let n = config.restart.nat_behaviour?;
    let port = config.restart.listen.get(n.listen)?.address.port();
    nat_addresses_on(config, port)
}
