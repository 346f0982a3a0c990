//! Long-term credentials (RFC 8489 §9.2), TURN REST API credentials (the
//! shared-secret scheme of coturn's `use-auth-secret` and eturnal), and the
//! stateless nonce.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use ring::hmac;
use subtle::ConstantTimeEq;

pub use crate::proto::integrity::Key;
use crate::proto::integrity::userhash;

/// The nonce cookie (RFC 8489 §9.2): "obMatJos2" and the base64 of the
/// 24-bit security feature set; "wAAA" sets bit 0 (password algorithms) and
/// bit 1 (username anonymity).
pub const NONCE_COOKIE: &str = "obMatJos2wAAA";

/// Everything needed to check a request's credentials.
#[derive(Clone)]
pub struct Credentials {
    realm: String,
    secrets: Vec<Vec<u8>>,
    /// Static users and their passwords.
    users: BTreeMap<String, String>,
    /// USERHASH (SHA-256 of `username:realm`) of each static user.
    userhashes: BTreeMap<[u8; 32], String>,
    nonce_key: hmac::Key,
    nonce_ttl: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets or keys.
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("secrets", &self.secrets.len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Credentials {
    /// `nonce_secret` keys the nonce MAC; `nonce_ttl` is how long a nonce
    /// stays fresh, in seconds.
    pub fn new(
        realm: &str,
        secrets: &[String],
        users: &BTreeMap<String, String>,
        nonce_secret: &[u8],
        nonce_ttl: u64,
    ) -> Self {
        Credentials {
            realm: realm.to_owned(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            users: users.clone(),
            userhashes: users
                .keys()
                .map(|u| (userhash(u, realm), u.clone()))
                .collect(),
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_secret),
            nonce_ttl,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Whether any credential source is configured.
    pub fn any(&self) -> bool {
        !self.secrets.is_empty() || !self.users.is_empty()
    }

    /// The keys that may verify a request by `username` at `unix_now` with
    /// PASSWORD-ALGORITHM `algorithm` (RFC 8489 §18.5): the static user's,
    /// or one per shared secret for a REST username whose expiry has not
    /// passed. Empty when the user is unknown or expired.
    pub fn keys(&self, username: &str, algorithm: u16, unix_now: u64) -> Vec<Key> {
        let key = |password: &str| Key::for_algorithm(algorithm, username, &self.realm, password);
        if let Some(p) = self.users.get(username) {
            return key(p).into_iter().collect();
        }
        match rest_expiry(username) {
            Some(exp) if exp > unix_now => self
                .secrets
                .iter()
                .filter_map(|s| key(&rest_password(s, username)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The static user behind a USERHASH (RFC 8489 §14.4). REST usernames
    /// cannot be found this way: their names are not known in advance.
    pub fn user_by_hash(&self, hash: &[u8]) -> Option<&str> {
        let h: [u8; 32] = hash.try_into().ok()?;
        self.userhashes.get(&h).map(String::as_str)
    }

    /// Whether `username` is a static user (whose credential never expires).
    pub fn is_static(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// A nonce for `client`: the issue time and a MAC over it and the client
    /// address, so that checking it needs no per-client memory.
    pub fn nonce(&self, unix_now: u64, client: SocketAddr) -> String {
        let mut s = format!("{NONCE_COOKIE}{unix_now:016x}");
        let mac = self.nonce_mac(unix_now, client);
        for b in &mac.as_ref()[..12] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Whether `nonce` was issued by us to `client` and is still fresh
    /// (otherwise the answer is 438 Stale Nonce, RFC 8489 §9.2.4).
    pub fn nonce_valid(&self, nonce: &str, unix_now: u64, client: SocketAddr) -> bool {
        let Some(nonce) = nonce.strip_prefix(NONCE_COOKIE) else {
            return false;
        };
        if nonce.len() != 40 || !nonce.is_ascii() {
            return false;
        }
        let Ok(ts) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        if ts > unix_now + 5 || unix_now.saturating_sub(ts) >= self.nonce_ttl {
            return false;
        }
        let mut got = [0u8; 12];
        for (i, b) in got.iter_mut().enumerate() {
            match u8::from_str_radix(&nonce[16 + 2 * i..18 + 2 * i], 16) {
                Ok(v) => *b = v,
                Err(_) => return false,
            }
        }
        let mac = self.nonce_mac(ts, client);
        bool::from(mac.as_ref()[..12].ct_eq(&got))
    }

    fn nonce_mac(&self, ts: u64, client: SocketAddr) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.nonce_key);
        ctx.update(&ts.to_be_bytes());
        match client.ip() {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&client.port().to_be_bytes());
        ctx.sign()
    }
}

/// The expiry (unix seconds) of a TURN REST username `<expiry>:<name>`.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let ts = username.split(':').next()?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

/// The REST password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&k, username.as_bytes()))
}

/// A REST username/password pair valid until `expiry`.
pub fn rest_credentials(secret: &str, name: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{name}");
    let password = rest_password(secret.as_bytes(), &username);
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::integrity::ALGORITHM_MD5;

    fn creds() -> Credentials {
        let mut users = BTreeMap::new();
        users.insert("alice".into(), "wonderland".into());
        Credentials::new(
            "example.org",
            &["old".into(), "new".into()],
            &users,
            b"k",
            600,
        )
    }

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // HMAC-SHA1("secret", "1700000000:bob"), base64; computed with openssl.
        assert_eq!(
            rest_password(b"secret", "1700000000:bob"),
            "YeMuUjjOaxvglmPbYS9o30UEIYg="
        );
    }

    #[test]
    fn any_secret_verifies_and_expiry_counts() {
        let c = creds();
        let (u, p) = rest_credentials("new", "bob", 2000);
        let keys = c.keys(&u, ALGORITHM_MD5, 1000);
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&Key::md5(&u, "example.org", &p)));
        assert!(c.keys(&u, ALGORITHM_MD5, 2000).is_empty());
        assert_eq!(c.keys("alice", ALGORITHM_MD5, 0).len(), 1);
        assert_eq!(
            c.keys("alice", crate::proto::integrity::ALGORITHM_SHA256, 0),
            vec![Key::sha256("alice", "example.org", "wonderland")]
        );
        assert!(c.keys("alice", 0x0003, 0).is_empty());
        assert!(c.keys("mallory", ALGORITHM_MD5, 0).is_empty());
        assert_eq!(
            c.user_by_hash(&userhash("alice", "example.org")),
            Some("alice")
        );
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let c = creds();
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let n = c.nonce(1000, a);
        assert!(c.nonce_valid(&n, 1000, a));
        assert!(c.nonce_valid(&n, 1599, a));
        assert!(!c.nonce_valid(&n, 1600, a));
        assert!(!c.nonce_valid(&n, 1000, b));
        assert!(n.starts_with(NONCE_COOKIE));
        let mut forged = n.clone();
        let last = n.len() - 1;
        forged.replace_range(last.., if n.ends_with('0') { "1" } else { "0" });
        assert!(!c.nonce_valid(&forged, 1000, a));
        assert!(!c.nonce_valid("short", 1000, a));
    }
}
