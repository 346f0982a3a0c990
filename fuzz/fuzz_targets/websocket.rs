//! The demo's WebSocket frame reader on arbitrary bytes, as a server (masked
//! frames expected) and as a client: it returns messages or an error, never
//! panics, and never returns a data message over its limit.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ferroturn::demo::websocket::{Message, Reader};
use libfuzzer_sys::fuzz_target;

/// The limit of returned messages: small, so that inputs reach it.
const MAX: usize = 256;

/// Poll a future that never waits (its reader is a byte slice) to the end.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    // A slice reader is always ready; bound the polls anyway.
    for _ in 0..1_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a reader over a slice did not finish");
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    // The first byte says how much arrives with the HTTP head (leftover).
    let at = (split as usize).min(data.len());
    for server in [true, false] {
        let (left, rest) = data.split_at(at);
        let mut r = if server {
            Reader::server(rest, left.to_vec(), MAX)
        } else {
            Reader::client(rest, left.to_vec(), MAX)
        };
        // Each message consumes at least a 2-byte header.
        for _ in 0..=data.len() / 2 {
            match run(r.next()) {
                Ok(Message::Text(t)) => assert!(t.len() <= MAX),
                Ok(Message::Binary(b)) => assert!(b.len() <= MAX),
                Ok(Message::Ping(p) | Message::Pong(p)) => assert!(p.len() <= 125),
                Ok(_) => {}
                Err(e) => {
                    let _ = e.close_code();
                    break;
                }
            }
        }
    }
});
