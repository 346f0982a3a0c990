//! Long-term credentials (RFC 8489 §9.2), TURN REST API credentials (the
//! shared-secret scheme of coturn's `use-auth-secret` and eturnal), and the
//! stateless nonce.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use ring::hmac;
use subtle::ConstantTimeEq;

pub use crate::proto::integrity::Key;
use crate::proto::integrity::{ALGORITHM_MD5, ALGORITHM_SHA256, userhash};

/// The nonce cookie (RFC 8489 §9.2): "obMatJos2" and the base64 of the
/// 24-bit security feature set; "wAAA" sets bit 0 (password algorithms) and
/// bit 1 (username anonymity).
pub const NONCE_COOKIE: &str = "obMatJos2wAAA";

/// How a static user (`[auth] users`) proves who it is: a plaintext
/// password, or the long-term keys derived from it (RFC 8489 §9.2.2), so
/// that the config file need not hold the password itself.
#[derive(Clone, PartialEq, Eq)]
pub enum StaticUser {
    /// Both keys derive from it: MD5 and SHA-256 password algorithms.
    Password(String),
    /// Keys given as such. A key covers only its own password algorithm
    /// (§18.5): neither can be derived from the other, so a user given
    /// only an MD5 key cannot answer with PASSWORD-ALGORITHM SHA-256 (and
    /// one given only a SHA-256 key needs PASSWORD-ALGORITHM SHA-256). The
    /// integrity attribute itself (MESSAGE-INTEGRITY or -SHA256, §14.5,
    /// §14.6) may be either with either key.
    Keys {
        /// MD5(username:realm:password), coturn's `0x…` key.
        md5: Option<[u8; 16]>,
        /// SHA-256(username:realm:password).
        sha256: Option<[u8; 32]>,
    },
}

impl StaticUser {
    /// The long-term key of `username` in `realm` for a password algorithm,
    /// if this credential has one.
    pub fn key(&self, algorithm: u16, username: &str, realm: &str) -> Option<Key> {
        match self {
            StaticUser::Password(p) => Key::for_algorithm(algorithm, username, realm, p),
            StaticUser::Keys { md5, sha256 } => match algorithm {
                ALGORITHM_MD5 => md5.map(Key::Md5),
                ALGORITHM_SHA256 => sha256.map(Key::Sha256),
                _ => None,
            },
        }
    }

    /// The keys of this credential for `username` in `realm`: a password
    /// turned into both keys once, so that a request costs no key
    /// derivation and the running server holds no password.
    pub fn derived(&self, username: &str, realm: &str) -> StaticUser {
        match self {
            StaticUser::Password(p) => StaticUser::Keys {
                md5: match Key::md5(username, realm, p) {
                    Key::Md5(k) => Some(k),
                    Key::Sha256(_) => None,
                },
                sha256: match Key::sha256(username, realm, p) {
                    Key::Sha256(k) => Some(k),
                    Key::Md5(_) => None,
                },
            },
            keys => keys.clone(),
        }
    }

    /// Whether this is the credential `password` of `username` in `realm`,
    /// however it is written.
    pub fn is(&self, username: &str, realm: &str, password: &str) -> bool {
        let given = StaticUser::Password(password.to_owned());
        [ALGORITHM_MD5, ALGORITHM_SHA256].into_iter().any(|alg| {
            self.key(alg, username, realm)
                .is_some_and(|k| Some(k) == given.key(alg, username, realm))
        })
    }
}

impl From<&str> for StaticUser {
    /// A plaintext password.
    fn from(password: &str) -> Self {
        StaticUser::Password(password.to_owned())
    }
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Says which form is configured, never the password or key.
        match self {
            StaticUser::Password(_) => f.write_str("Password(<redacted>)"),
            StaticUser::Keys { md5, sha256 } => f
                .debug_struct("Keys")
                .field("md5", &md5.map(|_| Redacted))
                .field("sha256", &sha256.map(|_| Redacted))
                .finish(),
        }
    }
}

/// Stands in for a secret, password, key or token in `Debug` output.
#[derive(Clone, Copy)]
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything needed to check a request's credentials.
#[derive(Clone)]
pub struct Credentials {
    realm: String,
    secrets: Vec<Vec<u8>>,
    /// Static users and their keys (passwords are turned into keys here).
    users: BTreeMap<String, StaticUser>,
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
        users: &BTreeMap<String, StaticUser>,
        nonce_secret: &[u8],
        nonce_ttl: u64,
    ) -> Self {
        Credentials {
            realm: realm.to_owned(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            users: users
                .iter()
                .map(|(u, c)| (u.clone(), c.derived(u, realm)))
                .collect(),
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
    /// PASSWORD-ALGORITHM `algorithm` (RFC 8489 §18.5): the static user's
    /// (none when the user is configured by a key of the other algorithm),
    /// or one per shared secret for a REST username whose expiry has not
    /// passed. Empty when the user is unknown or expired.
    pub fn keys(&self, username: &str, algorithm: u16, unix_now: u64) -> Vec<Key> {
        let key = |password: &str| Key::for_algorithm(algorithm, username, &self.realm, password);
        if let Some(u) = self.users.get(username) {
            return u
                .key(algorithm, username, &self.realm)
                .into_iter()
                .collect();
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
        let mut s = String::from(NONCE_COOKIE);
        push_hex(&mut s, &unix_now.to_be_bytes());
        push_hex(&mut s, &self.nonce_mac(unix_now, client).as_ref()[..12]);
        s
    }

    /// Whether `nonce` was issued by us to `client` and is still fresh
    /// (otherwise the answer is 438 Stale Nonce, RFC 8489 §9.2.4).
    pub fn nonce_valid(&self, nonce: &str, unix_now: u64, client: SocketAddr) -> bool {
        let Some(nonce) = nonce.strip_prefix(NONCE_COOKIE) else {
            return false;
        };
        // The issue time (8 bytes) and the MAC (12), in hex digits only.
        let mut raw = [0u8; 20];
        if !hex_bytes(nonce, &mut raw) {
            return false;
        }
        let ts = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if ts > unix_now + 5 || unix_now.saturating_sub(ts) >= self.nonce_ttl {
            return false;
        }
        let mac = self.nonce_mac(ts, client);
        bool::from(mac.as_ref()[..12].ct_eq(&raw[8..]))
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

/// A key as written in `[auth] users` and printed by `ferroturn password`:
/// `0x` and lower-case hex digits (coturn's and turnadmin's form).
pub fn key_hex(key: &Key) -> String {
    let mut s = String::from("0x");
    push_hex(&mut s, key.as_bytes());
    s
}

/// Append `bytes` as lower-case hex digits.
fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.reserve(2 * bytes.len());
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// Each byte's value as a hex digit (either case), or 0x10 for any other
/// byte: OR-ing the values of a whole string tells at once whether every
/// byte was a digit (a nonce is checked on every signed request; a test
/// per character cost more than its HMAC).
const HEX_VALUE: [u8; 256] = {
    let mut t = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Fill `out` from `s`, exactly two hex digits a byte (either case) and
/// nothing else (`from_str_radix` alone would take a `+` sign); false if
/// `s` is anything else.
fn hex_bytes(s: &str, out: &mut [u8]) -> bool {
    let d = s.as_bytes();
    if d.len() != 2 * out.len() {
        return false;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(d.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    bad & 0x10 == 0
}

/// The bytes of a `0x…` key of exactly `N` bytes (`2 * N` hex digits,
/// either case), or `None`.
pub fn parse_key_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex_bytes(s.strip_prefix("0x")?, &mut out).then_some(out)
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
    fn users_given_by_key_verify_with_their_algorithm_only() {
        // echo -n alice:example.org:wonderland | md5sum (and sha256sum):
        // what `turnadmin -k -u alice -r example.org -p wonderland` prints.
        let real = key_hex(&Key::md5("alice", "example.org", "wonderland"));
        assert_eq!(real, "0x72f86f2053703faa0f521ce71cfe6f59");
        let sha = key_hex(&Key::sha256("alice", "example.org", "wonderland"));
        assert_eq!(
            sha,
            "0xf0c3ae808cef897043f79de49549776f1f58cb7c5364e03ab40abac620459848"
        );
        let by_md5 = StaticUser::Keys {
            md5: parse_key_hex(&real),
            sha256: None,
        };
        let both = StaticUser::Keys {
            md5: parse_key_hex(&real),
            sha256: parse_key_hex(&sha),
        };
        for (user, sha256_too) in [(&by_md5, false), (&both, true)] {
            let c = Credentials::new(
                "example.org",
                &[],
                &BTreeMap::from([("alice".to_string(), user.clone())]),
                b"k",
                600,
            );
            assert_eq!(
                c.keys("alice", ALGORITHM_MD5, 0),
                vec![Key::md5("alice", "example.org", "wonderland")]
            );
            assert_eq!(!c.keys("alice", ALGORITHM_SHA256, 0).is_empty(), sha256_too);
            assert!(c.is_static("alice"));
            assert!(user.is("alice", "example.org", "wonderland"));
            assert!(!user.is("alice", "example.org", "looking-glass"));
            assert!(!user.is("alice", "other.org", "wonderland"));
        }
        let sha_only = StaticUser::Keys {
            md5: None,
            sha256: parse_key_hex(&sha),
        };
        assert!(
            sha_only
                .key(ALGORITHM_MD5, "alice", "example.org")
                .is_none()
        );
        assert_eq!(
            sha_only.key(ALGORITHM_SHA256, "alice", "example.org"),
            Some(Key::sha256("alice", "example.org", "wonderland"))
        );
        assert!(parse_key_hex::<16>(&real.to_uppercase().replacen("0X", "0x", 1)).is_some());
        for bad in [
            "72f8",
            "0x72f8",
            &format!("{real}0"),
            "0xzzf86f2053703faa0f521ce71cfe6f59",
        ] {
            assert!(parse_key_hex::<16>(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_shows_no_password_or_key() {
        let key = Key::md5("alice", "example.org", "wonderland");
        let hex = key_hex(&key);
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), StaticUser::from("wonderland"));
        users.insert(
            "bob".to_string(),
            StaticUser::Keys {
                md5: parse_key_hex(&hex),
                sha256: None,
            },
        );
        let c = Credentials::new("example.org", &["s3cret".into()], &users, b"k", 600);
        let shown = format!("{c:?} {:?} {:?} {key:?}", users["alice"], users["bob"]);
        for secret in ["wonderland", "s3cret", &hex[2..], &hex[2..10]] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
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
        // Hex digits only: a '+' sign, which from_str_radix takes, is not
        // one (either case is).
        let body = &n[NONCE_COOKIE.len()..];
        let plus = format!("{NONCE_COOKIE}+{}", &body[1..]);
        assert!(body.starts_with('0') && !c.nonce_valid(&plus, 1000, a));
        let upper = format!("{NONCE_COOKIE}{}", body.to_ascii_uppercase());
        assert!(c.nonce_valid(&upper, 1000, a));
    }

    #[test]
    fn passwords_become_keys_once() {
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), StaticUser::from("wonderland"));
        let c = Credentials::new("r", &[], &users, b"k", 600);
        assert!(matches!(
            c.users["alice"],
            StaticUser::Keys {
                md5: Some(_),
                sha256: Some(_)
            }
        ));
        assert_eq!(
            c.keys("alice", ALGORITHM_MD5, 0),
            [Key::md5("alice", "r", "wonderland")]
        );
        assert_eq!(
            c.keys("alice", ALGORITHM_SHA256, 0),
            [Key::sha256("alice", "r", "wonderland")]
        );
    }

    #[test]
    fn keys_in_hex_are_digits_only() {
        assert_eq!(parse_key_hex::<2>("0xa1B2"), Some([0xa1, 0xb2]));
        assert_eq!(parse_key_hex::<2>("0x+1b2"), None);
        assert_eq!(parse_key_hex::<2>("0xa1b"), None);
        assert_eq!(parse_key_hex::<2>("a1b2"), None);
        assert_eq!(parse_key_hex::<1>("0xé"), None);
        // Every byte value round-trips, and every character that is no
        // hex digit, in either place of a pair, is refused.
        let all: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        push_hex(&mut s, &all);
        assert_eq!(s.len(), 512);
        let mut back = [0u8; 256];
        assert!(hex_bytes(&s, &mut back));
        assert_eq!(&back[..], &all[..]);
        assert!(hex_bytes(&s.to_uppercase(), &mut back));
        assert_eq!(&back[..], &all[..]);
        for c in (0u8..128).filter(|c| !c.is_ascii_hexdigit()) {
            let c = c as char;
            assert_eq!(parse_key_hex::<1>(&format!("0x{c}0")), None, "{c:?}");
            assert_eq!(parse_key_hex::<1>(&format!("0x0{c}")), None, "{c:?}");
        }
    }
}
