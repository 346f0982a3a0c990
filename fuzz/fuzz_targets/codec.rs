//! The wire formats on arbitrary bytes: STUN decoding, integrity checks,
//! ChannelData and stream framing.
#![no_main]

use ferroturn::proto::{channel_data, framing, integrity, stun as wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
