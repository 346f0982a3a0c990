//! The wire formats on arbitrary bytes: STUN decoding, integrity checks,
//! ChannelData and stream framing.
#![no_main]

use ferroturn::proto::{channel_data, fingerprint, framing, integrity, stun as wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Our CRC (folding from 128 bytes up) against the stun crate's, which
    // is slow: short inputs only.
    if data.len() <= 512 {
        assert_eq!(
            fingerprint::crc32(data) ^ 0x5354_554E,
            stun::fingerprint::fingerprint_value(data)
        );
    }
    if let Ok(n) = wire::count_attributes(data) {
        assert!(n <= wire::MAX_ATTRIBUTES && n * 4 <= data.len());
    }
    let _ = framing::next_frame_len(data);
    let _ = channel_data::parse(data);
    if let Some(m) = wire::decode(data) {
        let _ = integrity::verify(&m, &integrity::Key::md5("u", "r", "p"));
        let _ = integrity::verify(&m, &integrity::Key::sha256("u", "r", "p"));
        let _ = wire::xor_peer_addresses(&m);
        let _ = wire::text(&m, stun::attributes::ATTR_USERNAME);
        let _ = wire::channel_number(&m);
        let _ = wire::requested_transport(&m);
        let _ = wire::attr_range(&m, stun::attributes::ATTR_DATA);
    }
});
