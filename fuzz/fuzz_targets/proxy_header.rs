//! The PROXY protocol header (v1 text, v2 binary) on arbitrary bytes, read
//! the way a PROXY protocol listener reads a connection's first bytes:
//! only as many as the parser asks for. It never asks for fewer than it
//! has or for more than the largest header, and a header it finds ends
//! exactly where its reading stopped.
#![no_main]

use ferroturn::io::proxy_header::{Header, Parsed, V1_MAX, V2_MAX_BODY, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut have = 0;
    // Each step asks for more than it has, so this ends.
    loop {
        match parse(&data[..have]) {
            Err(_) => return,
            Ok(Parsed::Need(n)) => {
                assert!(n > have, "asked for {n} with {have}");
                assert!(n <= (16 + V2_MAX_BODY).max(V1_MAX), "asked for {n}");
                if n > data.len() {
                    return;
                }
                have = n;
            }
            Ok(Parsed::Done { header, len }) => {
                assert_eq!(len, have);
                if data[0] == b'P' {
                    assert!(len <= V1_MAX);
                }
                if let Header::Client(c) = header {
                    // A mapped address is taken as the IPv4 one.
                    assert_eq!(c.ip(), c.ip().to_canonical());
                }
                return;
            }
        }
    }
});
