//! What the server derives from a [`Config`] for its engines: the peer
//! policy on this host, and the settings a reload changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Credentials;
use crate::config::{Config, DefaultFamily};
use crate::engine::{EngineConfig, Shared, Update};
use crate::policy::PeerPolicy;

/// The settings of one engine of a server running `config`: `shared` is
/// the state all its engines share (quotas, the relay port pool, which is
/// why `ports` stays empty), `seed` this engine's own randomness, and
/// `stun_only` the listeners that answer STUN alone.
pub(super) fn engine_config(
    config: &Config,
    credentials: &Credentials,
    policy: &PeerPolicy,
    stun_only: &[u16],
    shared: &Arc<Shared>,
    seed: u64,
) -> EngineConfig {
    EngineConfig {
        credentials: credentials.clone(),
        policy: policy.clone(),
        relay_bind: config.relay.address,
        relay_public: config.relay.public_address,
        relay_bind_v6: config.relay.address_v6,
        relay_public_v6: config.relay.public_address_v6,
        same_family_default: config.relay.default_family == DefaultFamily::SameAsClient,
        ports: Vec::new(),
        lifetime: Duration::from_secs(config.lifetime as u64),
        max_lifetime: Duration::from_secs(config.max_lifetime as u64),
        seed,
        legacy_channels: config.legacy_channel_numbers,
        limits: config.limits,
        strict_expiry: config.strict_expiry,
        expiry_grace: Duration::from_secs(config.expiry_grace),
        stun_only: stun_only.to_vec(),
        shared: shared.clone(),
    }
}

/// What a reload of `config` changes in the engines. Its realm is the
/// running one (a restart-only setting): keys and nonces depend on it.
pub(super) fn update_from(
    config: &Config,
    nonce_secret: &[u8],
    own: &[std::net::IpAddr],
) -> Update {
    Update {
        credentials: Credentials::new(
            &config.realm,
            &config.secrets,
            &config.users,
            nonce_secret,
            config.nonce_lifetime,
        ),
        policy: policy_from(config, own),
        limits: config.limits,
        strict_expiry: config.strict_expiry,
        expiry_grace: Duration::from_secs(config.expiry_grace),
    }
}

/// The peer policy of `config` on this host: its relay addresses (where a
/// live relay port is a peer), every listening socket of the server, which
/// no peer may be, and `own`, the interfaces' addresses as last read.
pub(super) fn policy_from(config: &Config, own: &[std::net::IpAddr]) -> PeerPolicy {
    let r = &config.relay;
    let mut relays = vec![r.public_address, r.address];
    relays.extend(r.public_address_v6);
    relays.extend(r.address_v6);
    let mut listeners: Vec<SocketAddr> = config.listen.iter().map(|l| l.address).collect();
    listeners.extend(config.metrics);
    listeners.extend(config.admin.as_ref().and_then(|a| a.address));
    // Closed whether or not `ferroturn demo` runs it.
    listeners.push(config.demo.address);
    PeerPolicy::new(config.allow.clone(), config.deny.clone(), relays, r.ports)
        .with_listeners(listeners)
        .with_own_addresses(own.iter().copied())
}
