//! `/ice-servers`: the `iceServers` a page should use for this server, with
//! short-lived TURN REST credentials (RFC 8489 long-term credentials whose
//! username is `<expiry>:<name>` and password base64(HMAC-SHA1(secret,
//! username))), so that no static password ever reaches a browser.

use serde_json::{Value, json};

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

/// Name part of minted usernames.
pub const USER_NAME: &str = "demo";

/// The JSON body of `/ice-servers` at `unix_now`:
/// `{"iceServers": [{"urls": [stun…]}, {"urls": [turn…], "username", "credential"}],
/// "ttl", "expires"}`. Without a secret only the STUN entry is given, with a
/// `warning`.
pub fn ice_servers(cfg: &IceConfig, unix_now: u64) -> Value {
    let (stun, turn): (Vec<&String>, Vec<&String>) =
        cfg.urls.iter().partition(|u| u.starts_with("stun:"));
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(json!({ "urls": stun }));
    }
    let expires = unix_now + cfg.ttl;
    match &cfg.secret {
        Some(secret) if !turn.is_empty() => {
            let (username, credential) = crate::auth::rest_credentials(secret, USER_NAME, expires);
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
        let v = ice_servers(&cfg(Some("secret")), 1_700_000_000);
        assert_eq!(v["ttl"], 600);
        assert_eq!(v["expires"], 1_700_000_600u64);
        let servers = v["iceServers"].as_array().unwrap();
        assert_eq!(servers[0], json!({"urls": ["stun:192.0.2.1:3478"]}));
        assert_eq!(servers[1]["urls"][1], "turn:192.0.2.1:3478?transport=tcp");
        assert_eq!(servers[1]["username"], "1700000600:demo");
        assert_eq!(
            servers[1]["credential"],
            crate::auth::rest_password(b"secret", "1700000600:demo")
        );
    }

    #[test]
    fn without_a_secret_only_stun_and_a_warning() {
        let v = ice_servers(&cfg(None), 0);
        assert_eq!(v["iceServers"], json!([{"urls": ["stun:192.0.2.1:3478"]}]));
        assert!(v["warning"].as_str().unwrap().contains("secrets"));
    }
}
