//! Message integrity (RFC 8489 §14.5, §14.6) and long-term key derivation
//! (§9.2.2, §18.5: MD5 and SHA-256 password algorithms), over `ring`.

use ring::{digest, hmac};
use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::Message;
use subtle::ConstantTimeEq;

/// PASSWORD-ALGORITHM numbers (RFC 8489 §18.5).
pub const ALGORITHM_MD5: u16 = 0x0001;
pub const ALGORITHM_SHA256: u16 = 0x0002;

/// A long-term key: MD5 or SHA-256 of `username:realm:password`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl std::fmt::Debug for Key {
    /// The algorithm only: the key verifies requests as the password does.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Md5(_) => f.write_str("Md5(<redacted>)"),
            Key::Sha256(_) => f.write_str("Sha256(<redacted>)"),
        }
    }
}

impl Key {
    pub fn md5(username: &str, realm: &str, password: &str) -> Key {
        let k = MessageIntegrity::new_long_term_integrity(
            username.to_owned(),
            realm.to_owned(),
            password.to_owned(),
        );
        let mut out = [0u8; 16];
        out.copy_from_slice(&k.0);
        Key::Md5(out)
    }

    pub fn sha256(username: &str, realm: &str, password: &str) -> Key {
        let d = digest::digest(
            &digest::SHA256,
            format!("{username}:{realm}:{password}").as_bytes(),
        );
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Key::Sha256(out)
    }

    /// The key for a PASSWORD-ALGORITHM number.
    pub fn for_algorithm(alg: u16, username: &str, realm: &str, password: &str) -> Option<Key> {
        match alg {
            ALGORITHM_MD5 => Some(Key::md5(username, realm, password)),
            ALGORITHM_SHA256 => Some(Key::sha256(username, realm, password)),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// USERHASH: SHA-256 of `username:realm` (RFC 8489 §14.4).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, format!("{username}:{realm}").as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Which integrity attribute a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mac {
    /// MESSAGE-INTEGRITY, HMAC-SHA1.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256.
    Sha256,
}

/// How to sign a response: the key and the attribute the request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    pub key: Key,
    pub mac: Mac,
}

/// Offset in `m.raw` of the first attribute `t`'s header.
pub(crate) fn attr_offset(m: &Message, t: AttrType) -> Option<usize> {
    let mut off = 20;
    for a in &m.attributes.0 {
        if a.typ == t {
            return Some(off);
        }
        off += 4 + ((a.length as usize + 3) & !3);
    }
    None
}

/// The integrity attribute the request carries: MESSAGE-INTEGRITY-SHA256
/// wins when both are present (RFC 8489 §9.2.4).
pub fn present(m: &Message) -> Option<Mac> {
    if m.contains(ATTR_MESSAGE_INTEGRITY_SHA256) {
        Some(Mac::Sha256)
    } else if m.contains(ATTR_MESSAGE_INTEGRITY) {
        Some(Mac::Sha1)
    } else {
        None
    }
}

/// Verify the message's integrity attribute with `key`, in constant time;
/// the attribute used, or `None` if it does not verify. The HMAC covers the
/// message up to the attribute, with the header length rewritten to end
/// just after it.
pub fn verify(m: &Message, key: &Key) -> Option<Mac> {
    verify_bytes(m, key.as_bytes())
}

/// [`verify`] with raw key bytes (short-term credentials use the password).
pub fn verify_bytes(m: &Message, key: &[u8]) -> Option<Mac> {
    let mac = present(m)?;
    let (t, alg) = match mac {
        Mac::Sha256 => (ATTR_MESSAGE_INTEGRITY_SHA256, hmac::HMAC_SHA256),
        Mac::Sha1 => (ATTR_MESSAGE_INTEGRITY, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
    };
    let offset = attr_offset(m, t)?;
    let tag = &m.attributes.0.iter().find(|a| a.typ == t)?.value;
    let ok_len = match mac {
        // MESSAGE-INTEGRITY-SHA256 may be truncated to 16..32 bytes, in
        // multiples of 4 (§14.6).
        Mac::Sha256 => (16..=32).contains(&tag.len()) && tag.len() % 4 == 0,
        Mac::Sha1 => tag.len() == 20,
    };
    if !ok_len {
        return None;
    }
    let mut header = [0u8; 20];
    header.copy_from_slice(&m.raw[..20]);
    let covered = (offset - 20 + 4 + tag.len()) as u16;
    header[2..4].copy_from_slice(&covered.to_be_bytes());
    let k = hmac_key(alg, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(&header);
    ctx.update(&m.raw[20..offset]);
    let full = ctx.sign();
    bool::from(full.as_ref()[..tag.len()].ct_eq(tag.as_slice())).then_some(mac)
}

/// Append the integrity attribute to a message under construction: the
/// HMAC of the message so far, its header length already counting the
/// attribute (RFC 8489 §14.5, §14.6).
pub fn sign(m: &mut Message, signer: &Signer) {
    let (t, alg, size) = match signer.mac {
        Mac::Sha1 => (
            ATTR_MESSAGE_INTEGRITY,
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            20,
        ),
        Mac::Sha256 => (ATTR_MESSAGE_INTEGRITY_SHA256, hmac::HMAC_SHA256, 32),
    };
    let len = m.length;
    m.length += 4 + size;
    m.write_length();
    let tag = hmac::sign(&hmac_key(alg, signer.key.as_bytes()), &m.raw);
    m.length = len;
    m.add(t, tag.as_ref());
}

/// Keys [`hmac_key`] keeps per thread.
const KEY_CACHE: usize = 8;

/// An HMAC key of `alg` for `key`, from a small per-thread cache: making
/// one hashes both padded key blocks, a third of what an HMAC over a
/// typical request costs, and a client signs with one key for a whole
/// allocation. Only the key bytes of long-term credentials pass here,
/// at most 32 bytes each; a longer key is not cached.
fn hmac_key(alg: hmac::Algorithm, key: &[u8]) -> hmac::Key {
    use std::cell::RefCell;
    type Slot = (hmac::Algorithm, usize, [u8; 32], hmac::Key);
    thread_local! {
        static CACHE: RefCell<(usize, Vec<Slot>)> = const { RefCell::new((0, Vec::new())) };
    }
    if key.len() > 32 {
        return hmac::Key::new(alg, key);
    }
    let mut bytes = [0u8; 32];
    bytes[..key.len()].copy_from_slice(key);
    CACHE.with_borrow_mut(|(next, slots)| {
        if let Some((.., k)) = slots
            .iter()
            .find(|(a, n, b, _)| *a == alg && *n == key.len() && same_key(b, &bytes))
        {
            return k.clone();
        }
        let k = hmac::Key::new(alg, key);
        let slot = (alg, key.len(), bytes, k.clone());
        if slots.len() < KEY_CACHE {
            slots.push(slot);
        } else {
            slots[*next] = slot;
            *next = (*next + 1) % KEY_CACHE;
        }
        k
    })
}

/// Whether two cached key blocks are equal, in a time that does not
/// depend on where they differ: the key asked for follows from a user name
/// a client chose, and the cached ones are other users' keys.
fn same_key(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_keys_match_only_when_every_byte_does() {
        let a = [7u8; 32];
        assert!(same_key(&a, &a));
        for i in [0, 15, 31] {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!same_key(&a, &b), "a key differing at byte {i}");
        }
    }

    #[test]
    fn sha1_signing_matches_the_stun_crate_with_cached_keys() {
        use stun::message::Setter;
        // Many keys in turn, each twice: past the cache's size, so that
        // cached and fresh keys both sign.
        for round in 0..2 {
            for i in 0..(KEY_CACHE as u8 * 2) {
                let key = Key::md5(&format!("u{i}"), "r", "p");
                let fresh = || {
                    let mut m = Message::new();
                    m.typ = stun::message::BINDING_REQUEST;
                    m.transaction_id = stun::agent::TransactionId([i; 12]);
                    m.write_header();
                    m.add(ATTR_USERNAME, b"someone");
                    m
                };
                let mut ours = fresh();
                sign(
                    &mut ours,
                    &Signer {
                        key,
                        mac: Mac::Sha1,
                    },
                );
                let mut theirs = fresh();
                MessageIntegrity(key.as_bytes().to_vec())
                    .add_to(&mut theirs)
                    .unwrap();
                assert_eq!(ours.raw, theirs.raw, "key {i}, round {round}");
                let mut back = Message::new();
                back.raw = ours.raw.clone();
                back.decode().unwrap();
                assert_eq!(verify(&back, &key), Some(Mac::Sha1));
            }
        }
    }

    #[test]
    fn sha256_key_and_tag_match_independent_values() {
        // echo -n "u:r:p" | sha256sum
        let key = Key::sha256("u", "r", "p");
        assert_eq!(
            hex(key.as_bytes()),
            "dcb021102e491e701a4a236daa8923af2161447bce7bb7260a351ee83e9f8154"
        );
        // A Binding request with a fixed transaction id, signed; the tag was
        // checked with `openssl dgst -sha256 -mac HMAC` over the same bytes.
        let mut m = Message::new();
        m.typ = stun::message::BINDING_REQUEST;
        m.transaction_id = stun::agent::TransactionId([7; 12]);
        m.write_header();
        sign(
            &mut m,
            &Signer {
                key,
                mac: Mac::Sha256,
            },
        );
        assert_eq!(
            hex(&m.raw[24..]),
            "69d970ee869ba11994219fabcbc125508d0fd7ee1c790cf2f9c1c494f6c1a7bd"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Only the first integrity attribute counts; attributes after it are
    /// outside the HMAC (RFC 8489 §14.5), so appending anything, another
    /// MESSAGE-INTEGRITY included, changes nothing, and a forged first one
    /// is not rescued by a good second one.
    #[test]
    fn first_integrity_attribute_decides() {
        use crate::proto::stun::decode;
        let key = Key::md5("u", "r", "p");
        let signer = Signer {
            key,
            mac: Mac::Sha1,
        };
        let mut m = Message::new();
        m.typ = stun::message::BINDING_REQUEST;
        m.write_header();
        m.add(ATTR_SOFTWARE, b"x");
        sign(&mut m, &signer);
        let tag = m.raw[m.raw.len() - 20..].to_vec();
        let mut dup = decode(&m.raw).unwrap();
        dup.add(ATTR_MESSAGE_INTEGRITY, &[0; 20]);
        dup.add(ATTR_SOFTWARE, b"after");
        assert_eq!(verify(&decode(&dup.raw).unwrap(), &key), Some(Mac::Sha1));
        let mut forged = m.raw.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        let mut forged = decode(&forged).unwrap();
        forged.add(ATTR_MESSAGE_INTEGRITY, &tag);
        assert_eq!(verify(&decode(&forged.raw).unwrap(), &key), None);
    }

    #[test]
    fn sha256_signatures_round_trip() {
        let mut m = Message::new();
        m.typ = stun::message::BINDING_REQUEST;
        m.write_header();
        m.add(ATTR_SOFTWARE, b"x");
        let signer = Signer {
            key: Key::sha256("u", "r", "p"),
            mac: Mac::Sha256,
        };
        sign(&mut m, &signer);
        let d = crate::proto::stun::decode(&m.raw).unwrap();
        assert_eq!(verify(&d, &signer.key), Some(Mac::Sha256));
    }
}
