//! The HTTP request head parser (metrics, admin API, demo) on arbitrary
//! bytes: it answers or refuses, never panics, and what it accepts has
//! the shape it promises.
#![no_main]

use ferroturn::http::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_head(data) {
        assert!(!r.method.is_empty());
        assert!(r.headers.len() <= 64);
        for (name, _) in &r.headers {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
        let _ = r.header("host");
        let _ = r.header_has_token("connection", "upgrade");
    }
});
