//! The other hand-written text parsers: TURN REST usernames and nonces
//! (src/auth.rs), the demo's signaling messages, the `Host` check of the
//! metrics and admin listeners (HTTP itself is hyper's), and the
//! configuration file (TOML, then this server's own checks). None may
//! panic; a refused configuration names a key.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use ferroturn::auth::{Credentials, rest_expiry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(exp) = rest_expiry(text) {
        assert!(text.as_bytes()[0].is_ascii_digit());
        let _ = exp;
    }
    let creds = Credentials::new("fuzz", &["s".into()], &BTreeMap::new(), b"k", 600);
    let from = "192.0.2.1:9".parse().unwrap();
    let _ = creds.nonce_valid(text, 1_800_000_000, from);
    let _ = creds.keys(text, 1, 1_800_000_000);
    let _ = ferroturn::demo::signal::parse(text);
    let also = ["turn.example".to_owned()];
    if ferroturn::http::is_local_authority(text, &also) {
        assert!(!text.is_empty() && !text.contains(char::is_whitespace));
    }
    if let Err(e) = ferroturn::config::parse(Path::new("fuzz.toml"), text) {
        assert_eq!(e.file, "fuzz.toml");
    }
});
