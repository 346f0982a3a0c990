//! Stream framing (RFC 8656 §12.5) on arbitrary bytes, read the way a
//! TCP/TLS connection reads them: frame after frame until more bytes are
//! needed or the stream is refused. Every frame lies inside the buffer and
//! is at least a header long, so the reader always makes progress.
#![no_main]

use ferroturn::proto::{Kind, classify, framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Each step consumes at least 4 bytes, so this ends.
    while let Ok(Some(n)) = framing::next_frame_len(rest) {
        assert!(n >= 4 && n <= rest.len(), "frame of {n} in {}", rest.len());
        let frame = &rest[..n];
        match classify(frame) {
            Kind::Stun => assert_eq!(n % 4, 0),
            Kind::ChannelData => assert!(ferroturn::proto::channel_data::parse(frame).is_some()),
            Kind::Other => panic!("a frame that is neither STUN nor ChannelData"),
        }
        rest = &rest[n..];
    }
});
