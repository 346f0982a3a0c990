//! `/ice-servers`: the `iceServers` a page should use for this server, with
//! short-lived TURN REST credentials (RFC 8489 long-term credentials whose
//! username is `<expiry>:<name>` and password base64(HMAC-SHA1(secret,
//! username))), so that no static password ever reaches a browser.

use serde_json::{Value, json};
use std::net::IpAddr;

/// What `/ice-servers` needs from the configuration.
#[derive(Clone)]
pub struct IceConfig {
    /// `stun:` and `turn:` URIs, as [`crate::io::ice_urls`] gives them.
    pub urls: Vec<String>,
    /// The secret credentials are minted from (the first of `[auth] secrets`).
    pub secret: Option<String>,
    /// Credential lifetime, seconds.
    pub ttl: u64,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("urls", &self.urls)
            .field(
                "secret",
                &self.secret.as_ref().map(|_| crate::auth::Redacted),
            )
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Name part of minted usernames: `demo-` and the visitor's tag.
pub const USER_NAME: &str = "demo";

/// The name a visitor's credentials are minted for: `demo-` and 8 hex
/// digits of an HMAC (keyed with the REST secret) of its IPv4 address or
/// IPv6 /64. Every visitor gets the per-user quota of its own, stable
/// across requests (minting more does not give more: the quota counts the
/// name), and the username does not show the address.
pub fn visitor_name(secret: &str, visitor: IpAddr) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let origin = crate::addr::Origin::of(visitor).key().to_be_bytes();
    let tag = ring::hmac::sign(
        &key,
        &[b"ferroturn demo visitor:".as_slice(), &origin].concat(),
    );
    let hex: String = tag.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{USER_NAME}-{hex}")
}

/// The JSON body of `/ice-servers` at `unix_now`, for `visitor`:
/// `{"iceServers": [{"urls": [stun…]}, {"urls": [turn…], "username", "credential"}],
/// "ttl", "expires"}`. Without a secret only the STUN entry is given, with a
/// `warning`.
pub fn ice_servers(cfg: &IceConfig, unix_now: u64, visitor: IpAddr) -> Value {
    let (stun, turn): (Vec<&String>, Vec<&String>) =
        cfg.urls.iter().partition(|u| u.starts_with("stun:"));
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(json!({ "urls": stun }));
    }
    let expires = unix_now + cfg.ttl;
    match &cfg.secret {
        Some(secret) if !turn.is_empty() => {
            let name = visitor_name(secret, visitor);
            let (username, credential) = crate::auth::rest_credentials(secret, &name, expires);
            servers.push(json!({ "urls": turn, "username": username, "credential": credential }));
            json!({ "iceServers": servers, "ttl": cfg.ttl, "expires": expires })
        }
        _ => json!({
            "iceServers": servers,
            "warning": "no [auth] secrets configured: TURN REST credentials cannot be minted, only STUN is offered",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secret: Option<&str>) -> IceConfig {
        IceConfig {
            urls: vec![
                "stun:192.0.2.1:3478".into(),
                "turn:192.0.2.1:3478?transport=udp".into(),
                "turn:192.0.2.1:3478?transport=tcp".into(),
            ],
            secret: secret.map(Into::into),
            ttl: 600,
        }
    }

    #[test]
    fn mints_rest_credentials_that_the_server_accepts() {
        let visitor: IpAddr = "192.0.2.7".parse().unwrap();
        let v = ice_servers(&cfg(Some("secret")), 1_700_000_000, visitor);
        assert_eq!(v["ttl"], 600);
        assert_eq!(v["expires"], 1_700_000_600u64);
        let servers = v["iceServers"].as_array().unwrap();
        assert_eq!(servers[0], json!({"urls": ["stun:192.0.2.1:3478"]}));
        assert_eq!(servers[1]["urls"][1], "turn:192.0.2.1:3478?transport=tcp");
        let user = format!("1700000600:{}", visitor_name("secret", visitor));
        assert_eq!(servers[1]["username"], user.as_str());
        assert_eq!(
            servers[1]["credential"],
            crate::auth::rest_password(b"secret", &user)
        );
    }

    #[test]
    fn each_visitor_has_a_stable_name_of_its_own() {
        let n = |ip: &str| visitor_name("secret", ip.parse().unwrap());
        assert!(n("192.0.2.7").starts_with("demo-") && n("192.0.2.7").len() == 13);
        assert_eq!(n("192.0.2.7"), n("192.0.2.7"));
        assert_eq!(n("192.0.2.7"), n("::ffff:192.0.2.7"));
        assert_ne!(n("192.0.2.7"), n("192.0.2.8"));
        assert_eq!(n("2001:db8:1:2::1"), n("2001:db8:1:2::99"), "one /64");
        assert_ne!(n("2001:db8:1:2::1"), n("2001:db8:1:3::1"));
        assert_ne!(
            n("192.0.2.7"),
            visitor_name("other", "192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn without_a_secret_only_stun_and_a_warning() {
        let v = ice_servers(&cfg(None), 0, "192.0.2.7".parse().unwrap());
        assert_eq!(v["iceServers"], json!([{"urls": ["stun:192.0.2.1:3478"]}]));
        assert!(v["warning"].as_str().unwrap().contains("secrets"));
    }
}
