//! TURN over DTLS (RFC 7350; RFC 8656 §3.1): STUN messages and ChannelData
//! ride in DTLS 1.2 application data records on a UDP listener, one
//! message per record, as over plain UDP.
//!
//! A ClientHello from an address with no session gets a HelloVerifyRequest
//! (RFC 6347 §4.2.1) built here, statelessly: its cookie is an HMAC-SHA256
//! (ring) over the client's address and port and the ClientHello's fields
//! other than the cookie, keyed by a per-shard secret that rotates every
//! [`ROTATE`]. Nothing is kept for it, and the answer is never larger than
//! the ClientHello (no amplification). Only a ClientHello that carries a
//! valid cookie makes a session: an OpenSSL object that `DTLSv1_listen`
//! puts in the state after a cookie exchange, within the limits of TCP and
//! TLS connections (the [`StreamGuard`] they share: `connections_per_ip`,
//! `tls_handshakes_per_ip`, `stream_connections`), with a handshake deadline
//! ([`HANDSHAKE_TIMEOUT`]) and an idle one ([`IDLE_TIMEOUT`]).
//!
//! The certificate and key are the listener's, as for TLS, and a reload
//! swaps them for sessions made afterwards ([`Acceptor::reload`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslFiletype, SslMethod, SslOptions, SslStream, SslVersion,
};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::io::stream::guard::{Slot, StreamGuard};
use crate::io::stream::tls::LoadError;

/// How long a session has to finish its handshake from its valid cookie.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session lives without a datagram from its client: the
/// longest a TURN client goes without a Refresh or a permission refresh
/// (RFC 8656 §9: permissions last 300 s) with some slack.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the cookie key changes; a cookie is good for one to two
/// periods.
pub const ROTATE: Duration = Duration::from_secs(60);

/// How often expired sessions are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// The path MTU DTLS records are cut to (RFC 8656 §3.1 leaves it to the
/// implementation; 1200 bytes pass nearly every path).
const MTU: u32 = 1200;

/// The largest record a client may send: a STUN message or ChannelData of
/// a UDP datagram's size.
const RECORD: usize = 65_536;

/// Cookie length: a whole HMAC-SHA256 tag.
const COOKIE_LEN: usize = 32;

/// OpenSSL's `DTLS_CTRL_HANDLE_TIMEOUT` (ssl.h): retransmit the last
/// flight if its timer ran out.
const DTLS_CTRL_HANDLE_TIMEOUT: i32 = 74;

/// Length of a HelloVerifyRequest with our cookie: record header (13),
/// handshake header (12), server_version (2), cookie length (1), cookie.
pub const HVR_LEN: usize = 13 + 12 + 3 + COOKIE_LEN;

// OpenSSL's stateless listen: not wrapped by the `openssl` crate. libssl is
// linked by openssl-sys.
unsafe extern "C" {
    fn DTLSv1_listen(ssl: *mut std::ffi::c_void, client: *mut std::ffi::c_void) -> i32;
    /// `DTLSv1_handle_timeout` is this call with [`DTLS_CTRL_HANDLE_TIMEOUT`].
    fn SSL_ctrl(
        ssl: *mut std::ffi::c_void,
        cmd: i32,
        larg: std::ffi::c_long,
        parg: *mut std::ffi::c_void,
    ) -> std::ffi::c_long;
    fn BIO_ADDR_new() -> *mut std::ffi::c_void;
    fn BIO_ADDR_free(addr: *mut std::ffi::c_void);
}

/// An OpenSSL DTLS 1.2 server context for the PEM certificate chain in
/// `cert` and the PEM private key in `key` (RSA or EC).
pub fn load(cert: &Path, key: &Path) -> Result<SslContext, LoadError> {
    let cert_err = |reason: String| LoadError::cert(cert, reason);
    let key_err = |reason: String| LoadError::key(key, reason);
    // Read the files first, for an error that names the problem.
    std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let setup = |e: openssl::error::ErrorStack| cert_err(format!("DTLS setup: {e}"));
    let mut b = SslContext::builder(SslMethod::dtls_server()).map_err(setup)?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(setup)?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| cert_err(format!("not a usable PEM certificate chain: {e}")))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| key_err(format!("not a usable PEM private key: {e}")))?;
    b.check_private_key().map_err(|_| {
        key_err(format!(
            "does not match the certificate in {}",
            cert.display()
        ))
    })?;
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::COOKIE_EXCHANGE);
    // The cookie exchange happens before OpenSSL sees a ClientHello
    // ([`Dtls::datagram`]): `DTLSv1_listen` only meets ClientHellos whose
    // cookie was checked already, and never needs to make one.
    b.set_cookie_generate_cb(|_, _| Err(openssl::error::ErrorStack::get()));
    b.set_cookie_verify_cb(|_, _| true);
    Ok(b.build())
}

/// The DTLS context of one `[[listen]]` entry, shared by every shard.
/// Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<(SslContext, PathBuf, PathBuf)>>,
}

impl Acceptor {
    /// Load the certificate and key of a listener.
    pub fn new(cert: &Path, key: &Path) -> Result<Acceptor, LoadError> {
        let ctx = load(cert, key)?;
        Ok(Acceptor {
            current: Arc::new(RwLock::new((ctx, cert.to_owned(), key.to_owned()))),
        })
    }

    /// Read the certificate and key (again): sessions made afterwards use
    /// them; on error the current ones stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), LoadError> {
        let ctx = load(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            (ctx, cert.to_owned(), key.to_owned());
        Ok(())
    }

    /// The files in use.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        (c.1.clone(), c.2.clone())
    }

    fn context(&self) -> SslContext {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// The parts of an unfragmented epoch-0 ClientHello record that the
/// cookie exchange needs (RFC 6347 §4.1, §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Epoch and sequence number of the record (answered with the same).
    pub record_seq: [u8; 8],
    /// The handshake message_seq (answered with the same).
    pub message_seq: [u8; 2],
    /// The body up to the cookie: client_version, random, session_id.
    pub head: &'a [u8],
    pub cookie: &'a [u8],
    /// The body after the cookie: cipher suites, compression, extensions.
    pub tail: &'a [u8],
}

fn u24(b: &[u8]) -> usize {
    (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize
}

/// `d` as a DTLS ClientHello in one record and one fragment; `None` for
/// anything else.
pub fn client_hello(d: &[u8]) -> Option<Hello<'_>> {
    // Record: type 22 (handshake), version {254, x}, epoch 0.
    if d.len() < 13 + 12 || d[0] != 22 || d[1] != 254 || d[3..5] != [0, 0] {
        return None;
    }
    let len = u16::from_be_bytes([d[11], d[12]]) as usize;
    let hs = d.get(13..13 + len)?;
    // Handshake: type 1 (client_hello), whole (offset 0, length = total).
    if hs.len() < 12 || hs[0] != 1 || u24(&hs[6..9]) != 0 {
        return None;
    }
    let body_len = u24(&hs[1..4]);
    if u24(&hs[9..12]) != body_len {
        return None;
    }
    let body = hs.get(12..12 + body_len)?;
    let sid = *body.get(34)? as usize;
    let at = 35 + sid;
    let cookie_len = *body.get(at)? as usize;
    let cookie = body.get(at + 1..at + 1 + cookie_len)?;
    let mut record_seq = [0u8; 8];
    record_seq.copy_from_slice(&d[3..11]);
    Some(Hello {
        record_seq,
        message_seq: [hs[4], hs[5]],
        head: &body[..at],
        cookie,
        tail: &body[at + 1 + cookie_len..],
    })
}

/// The rotating keys of the cookie exchange.
struct Cookies {
    rng: SystemRandom,
    current: hmac::Key,
    previous: hmac::Key,
    rotated: Instant,
}

impl Cookies {
    fn new(now: Instant) -> Cookies {
        let rng = SystemRandom::new();
        let current = Self::key(&rng);
        let previous = Self::key(&rng);
        Cookies {
            rng,
            current,
            previous,
            rotated: now,
        }
    }

    fn key(rng: &SystemRandom) -> hmac::Key {
        let mut k = [0u8; 32];
        // Without system randomness the process could not have started.
        let _ = rng.fill(&mut k);
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    }

    fn rotate_if_due(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= ROTATE {
            self.previous = std::mem::replace(&mut self.current, Self::key(&self.rng));
            self.rotated = now;
        }
    }

    /// The cookie for `hello` from `from` under `key`.
    fn cookie(key: &hmac::Key, from: SocketAddr, hello: &Hello) -> hmac::Tag {
        let mut c = hmac::Context::with_key(key);
        let ip = match from.ip().to_canonical() {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        c.update(&ip);
        c.update(&from.port().to_be_bytes());
        c.update(hello.head);
        c.update(hello.tail);
        c.sign()
    }

    fn valid(&self, from: SocketAddr, hello: &Hello) -> bool {
        hello.cookie.len() == COOKIE_LEN
            && [&self.current, &self.previous]
                .into_iter()
                .any(|k| openssl::memcmp::eq(Self::cookie(k, from, hello).as_ref(), hello.cookie))
    }
}

/// Write the HelloVerifyRequest for `hello` with `cookie` into `out`
/// (RFC 6347 §4.2.1: server_version DTLS 1.0, the ClientHello's record
/// sequence number and message_seq).
fn hello_verify_request(hello: &Hello, cookie: &[u8], out: &mut [u8; HVR_LEN]) {
    let body = 3 + COOKIE_LEN;
    out[0] = 22;
    out[1..3].copy_from_slice(&[254, 255]);
    out[3..11].copy_from_slice(&hello.record_seq);
    out[11..13].copy_from_slice(&((12 + body) as u16).to_be_bytes());
    out[13] = 3;
    out[14..17].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
    out[17..19].copy_from_slice(&hello.message_seq);
    out[19..22].copy_from_slice(&[0, 0, 0]);
    out[22..25].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
    out[25..27].copy_from_slice(&[254, 255]);
    out[27] = COOKIE_LEN as u8;
    out[28..].copy_from_slice(cookie);
}

/// The most a session's inbound copy keeps between datagrams (a typical
/// record and more; a larger datagram's copy is freed once read).
const PIPE_KEEP: usize = 2048;

/// A session's side of OpenSSL's I/O: the datagram being read, and
/// records written straight to the client from the listener socket.
struct Pipe {
    fd: RawFd,
    to: SocketAddr,
    inbound: Vec<u8>,
    pending: bool,
}

impl Pipe {
    fn feed(&mut self, d: &[u8]) {
        self.inbound.clear();
        self.inbound.extend_from_slice(d);
        self.pending = true;
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !std::mem::take(&mut self.pending) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inbound.len().min(buf.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        // A session keeps a datagram's copy only while it is read: one
        // large datagram (anyone can send one from the client's address)
        // must not leave every session holding its size.
        if self.inbound.capacity() > PIPE_KEEP {
            self.inbound = Vec::new();
        }
        Ok(n)
    }
}

impl Write for Pipe {
    /// One record (or flight) as one datagram; one the socket refuses is
    /// lost, as a datagram may be.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the listener socket outlives every session of its shard.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = crate::io::host::send_now(&fd, buf, self.to);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Session {
    stream: SslStream<Pipe>,
    established: bool,
    /// The session's place in its source's and the server's connection
    /// count, and while it shakes hands, in its source's handshakes.
    _connection: Slot,
    handshake: Option<Slot>,
    /// The handshake's deadline until it is done.
    deadline: Instant,
    last: Instant,
}

/// Plaintext records of one datagram, for the engine: record `i` ends at
/// `ends[i]` in `data` and starts where the one before ends.
#[derive(Default)]
pub struct Plain {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

/// The DTLS listeners of one shard and their sessions.
pub struct Dtls {
    /// Acceptors by `[[listen]]` index.
    acceptors: Vec<Option<Acceptor>>,
    sessions: HashMap<(u16, SocketAddr), Session>,
    cookies: Cookies,
    guard: Arc<StreamGuard>,
    next_sweep: Instant,
}

impl Dtls {
    pub fn new(acceptors: Vec<(u16, Acceptor)>, guard: Arc<StreamGuard>, now: Instant) -> Dtls {
        let mut by_index = Vec::new();
        for (l, a) in acceptors {
            let l = l as usize;
            if by_index.len() <= l {
                by_index.resize_with(l + 1, || None);
            }
            by_index[l] = Some(a);
        }
        Dtls {
            acceptors: by_index,
            sessions: HashMap::new(),
            cookies: Cookies::new(now),
            guard,
            next_sweep: now + SWEEP,
        }
    }

    /// Whether `[[listen]]` entry `l` is a DTLS listener.
    #[inline]
    pub fn listens(&self, l: u16) -> bool {
        self.acceptors.get(l as usize).is_some_and(Option::is_some)
    }

    /// When [`Self::sweep`] is next due, if any session may expire.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.sessions.is_empty()).then_some(self.next_sweep)
    }

    /// A datagram from `from` on DTLS listener `l` (socket `fd`): the
    /// stateless cookie exchange, a new session, or records of a session;
    /// the application data it carried is left in `plain`.
    pub fn datagram(
        &mut self,
        now: Instant,
        l: u16,
        fd: RawFd,
        from: SocketAddr,
        d: &[u8],
        plain: &mut Plain,
    ) {
        plain.ends.clear();
        let Some(s) = self.sessions.get_mut(&(l, from)) else {
            self.unknown(now, l, fd, from, d);
            return;
        };
        if s.established && client_hello(d).is_some() {
            // A client that lost its session starts again from the same
            // address (RFC 6347 §4.2.8): a new cookie exchange, and the
            // old session goes once the cookie comes back.
            self.unknown(now, l, fd, from, d);
            return;
        }
        // `last` moves only for what OpenSSL took as the client's: a
        // datagram anyone can send from the client's address (spoofed, and
        // discarded by OpenSSL) must not keep an idle session alive.
        s.stream.get_mut().feed(d);
        if !s.established {
            match s.stream.do_handshake() {
                Ok(()) => {
                    s.last = now;
                    s.established = true;
                    s.handshake = None;
                    tracing::debug!(client = %from, "DTLS session established");
                }
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                    return;
                }
                Err(e) => {
                    tracing::debug!(client = %from, "DTLS handshake failed: {e}");
                    self.remove(l, from);
                    return;
                }
            }
        }
        // One buffer of a datagram's largest size, made once: the records
        // of one datagram never add up to more, so each fits whole.
        if plain.data.len() < RECORD {
            plain.data.resize(RECORD, 0);
        }
        let mut at = 0;
        loop {
            match s.stream.ssl_read(&mut plain.data[at..]) {
                Ok(n) if n > 0 => {
                    s.last = now;
                    at += n;
                    plain.ends.push(at);
                }
                Ok(_) => return,
                Err(e) => {
                    if e.code() != ErrorCode::WANT_READ {
                        // close_notify, or a fatal alert.
                        self.remove(l, from);
                    }
                    return;
                }
            }
            if at == plain.data.len() {
                return;
            }
        }
    }

    /// A datagram from an address without a session (or a ClientHello
    /// from one with an established session): a ClientHello gets a
    /// HelloVerifyRequest, or with a valid cookie makes a new session;
    /// anything else is dropped unanswered.
    fn unknown(&mut self, now: Instant, l: u16, fd: RawFd, from: SocketAddr, d: &[u8]) {
        let Some(hello) = client_hello(d) else {
            return;
        };
        self.cookies.rotate_if_due(now);
        if !self.cookies.valid(from, &hello) {
            // Never more bytes out than in.
            if d.len() >= HVR_LEN {
                let cookie = Cookies::cookie(&self.cookies.current, from, &hello);
                let mut out = [0u8; HVR_LEN];
                hello_verify_request(&hello, cookie.as_ref(), &mut out);
                // SAFETY: the listener socket is open while its shard runs.
                let sock = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = crate::io::host::send_now(&sock, &out, from);
            }
            return;
        }
        let Some(ctx) = (self.acceptors.get(l as usize))
            .and_then(Option::as_ref)
            .map(Acceptor::context)
        else {
            return;
        };
        // The cookie proves the address: a session it had is over.
        self.remove(l, from);
        // Within the limits, or dropped (and counted): the client retries.
        let Some(connection) = self.guard.connection(from.ip()) else {
            return;
        };
        let Some(handshake) = self.guard.handshake(from.ip()) else {
            return;
        };
        let Some(stream) = start(&ctx, fd, from, d) else {
            return;
        };
        let mut s = Session {
            stream,
            established: false,
            _connection: connection,
            handshake: Some(handshake),
            deadline: now + HANDSHAKE_TIMEOUT,
            last: now,
        };
        match s.stream.do_handshake() {
            Ok(()) => {
                s.established = true;
                s.handshake = None;
            }
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {}
            Err(e) => {
                tracing::debug!(client = %from, "DTLS handshake failed: {e}");
                return;
            }
        }
        self.sessions.insert((l, from), s);
    }

    /// Encrypt `data` for `client` of listener `l` and send it; false if
    /// it has no established session.
    pub fn send(&mut self, l: u16, client: SocketAddr, data: &[u8]) -> bool {
        match self.sessions.get_mut(&(l, client)) {
            Some(s) if s.established => s.stream.ssl_write(data).is_ok(),
            _ => false,
        }
    }

    /// The DTLS version and cipher suite of `client`'s session, in
    /// OpenSSL's words (as coturn's usage events name them).
    pub fn names(&self, l: u16, client: SocketAddr) -> Option<(&'static str, &'static str)> {
        let s = self.sessions.get(&(l, client))?;
        let ssl = s.stream.ssl();
        Some((ssl.version_str(), ssl.current_cipher()?.name()))
    }

    /// Drop the sessions whose handshake or idle time ran out; a session
    /// still shaking hands resends its last flight if OpenSSL's timer for
    /// it ran out (RFC 6347 §4.2.4: the client's flight or ours was lost).
    pub fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP;
        for s in self.sessions.values_mut().filter(|s| !s.established) {
            // SAFETY: the session's own SSL pointer; the call writes the
            // flight through its BIO, our Pipe.
            unsafe {
                let ssl = s.stream.ssl().as_ptr().cast();
                SSL_ctrl(ssl, DTLS_CTRL_HANDLE_TIMEOUT, 0, std::ptr::null_mut());
            }
        }
        let expired: Vec<(u16, SocketAddr)> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                if s.established {
                    now.saturating_duration_since(s.last) >= IDLE_TIMEOUT
                } else {
                    now >= s.deadline
                }
            })
            .map(|(k, _)| *k)
            .collect();
        for (l, from) in expired {
            tracing::debug!(client = %from, "DTLS session timed out");
            self.remove(l, from);
        }
        if self.sessions.is_empty() && self.sessions.capacity() > 64 {
            self.sessions = HashMap::new();
        }
    }

    /// Drop a session: its places in the counts go back.
    fn remove(&mut self, l: u16, from: SocketAddr) {
        self.sessions.remove(&(l, from));
    }
}

/// An OpenSSL session for the ClientHello `d` whose cookie was checked:
/// `DTLSv1_listen` takes it as the second ClientHello of a cookie exchange
/// and leaves the session ready to answer it.
fn start(ctx: &SslContext, fd: RawFd, from: SocketAddr, d: &[u8]) -> Option<SslStream<Pipe>> {
    let mut ssl = Ssl::new(ctx).ok()?;
    ssl.set_mtu(MTU).ok()?;
    let mut pipe = Pipe {
        fd,
        to: from,
        inbound: Vec::with_capacity(d.len()),
        pending: false,
    };
    pipe.feed(d);
    let stream = SslStream::new(ssl, pipe).ok()?;
    // SAFETY: a fresh BIO_ADDR, freed below; the SSL pointer is the
    // stream's, alive for the call.
    let listened = unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return None;
        }
        let r = DTLSv1_listen(stream.ssl().as_ptr().cast(), addr);
        BIO_ADDR_free(addr);
        r
    };
    (listened == 1).then_some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as OpenSSL's client sends it first (no cookie), cut
    /// to what the parser reads.
    fn hello(cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![254, 253];
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend(cookie);
        body.extend([0, 2, 0xc0, 0x2b, 1, 0]); // one suite, null compression
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend([0, 0, 0, 0, 0]);
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(&body);
        let mut d = vec![22, 254, 255, 0, 0, 0, 0, 0, 0, 0, 5];
        d.extend((hs.len() as u16).to_be_bytes());
        d.extend(hs);
        d
    }

    #[test]
    fn cookie_round_trip_binds_address_and_hello() {
        let now = Instant::now();
        let c = Cookies::new(now);
        let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let d = hello(&[]);
        let h = client_hello(&d).unwrap();
        assert!(h.cookie.is_empty());
        assert!(!c.valid(from, &h));
        let mut out = [0u8; HVR_LEN];
        let tag = Cookies::cookie(&c.current, from, &h);
        hello_verify_request(&h, tag.as_ref(), &mut out);
        assert_eq!(out[0], 22);
        assert_eq!(&out[5..11], &[0, 0, 0, 0, 0, 5], "record sequence echoed");
        assert_eq!(out[13], 3, "hello_verify_request");
        let cookie = &out[28..];
        let d2 = hello(cookie);
        let h2 = client_hello(&d2).unwrap();
        assert!(c.valid(from, &h2));
        let other: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        assert!(!c.valid(other, &h2), "another port");
        let mut bad = cookie.to_vec();
        bad[0] ^= 1;
        assert!(!c.valid(from, &client_hello(&hello(&bad)).unwrap()));
    }

    #[test]
    fn cookie_survives_one_rotation_not_two() {
        let t0 = Instant::now();
        let mut c = Cookies::new(t0);
        let from: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let d = hello(&[]);
        let tag = Cookies::cookie(&c.current, from, &client_hello(&d).unwrap());
        let d2 = hello(tag.as_ref());
        c.rotate_if_due(t0 + ROTATE);
        assert!(c.valid(from, &client_hello(&d2).unwrap()));
        c.rotate_if_due(t0 + ROTATE * 2);
        assert!(!c.valid(from, &client_hello(&d2).unwrap()));
    }

    #[test]
    fn not_a_hello_is_none() {
        let d = hello(&[]);
        assert!(client_hello(&d[..30]).is_none());
        let mut e = d.clone();
        e[3] = 1; // epoch 1
        assert!(client_hello(&e).is_none());
        let mut f = d;
        f[13] = 2; // server_hello
        assert!(client_hello(&f).is_none());
    }
}
