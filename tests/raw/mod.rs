//! A small hand-driven TURN client over UDP or TCP, built on the library's
//! request builder, for tests that need exact control of the bytes.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ferroturn::proto::stun::{self as wire, Message, Request};
use stun::attributes::*;
use stun::message::*;

pub enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

pub struct RawClient {
    pub link: Link,
    pub server: SocketAddr,
    realm: String,
    user: String,
    pass: String,
    nonce: String,
}

impl RawClient {
    pub fn udp(server: SocketAddr, realm: &str, user: &str, pass: &str) -> Self {
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let s = UdpSocket::bind(local).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self::new(Link::Udp(s), server, realm, user, pass)
    }

    /// A client on a UDP socket made elsewhere (e.g. in a network
    /// namespace).
    pub fn udp_on(s: UdpSocket, server: SocketAddr, realm: &str, user: &str, pass: &str) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self::new(Link::Udp(s), server, realm, user, pass)
    }

    pub fn tcp(server: SocketAddr, realm: &str, user: &str, pass: &str) -> Self {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_nodelay(true).unwrap();
        Self::new(Link::Tcp(s), server, realm, user, pass)
    }

    /// A client on a TCP connection made elsewhere (e.g. from a chosen
    /// local address, or through a proxy).
    pub fn over_tcp(s: TcpStream, server: SocketAddr, realm: &str, user: &str, pass: &str) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_nodelay(true).unwrap();
        Self::new(Link::Tcp(s), server, realm, user, pass)
    }

    fn new(link: Link, server: SocketAddr, realm: &str, user: &str, pass: &str) -> Self {
        RawClient {
            link,
            server,
            realm: realm.into(),
            user: user.into(),
            pass: pass.into(),
            nonce: String::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp(s) => s.local_addr().unwrap(),
            Link::Tcp(s) => s.local_addr().unwrap(),
        }
    }

    /// Send one datagram or stream frame.
    pub fn send(&mut self, frame: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(frame, self.server).unwrap();
            }
            Link::Tcp(s) => s.write_all(frame).unwrap(),
        }
    }

    /// Receive one datagram or stream frame (STUN or padded ChannelData)
    /// into `buf`; returns its length.
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        match &mut self.link {
            Link::Udp(s) => s.recv_from(buf).unwrap().0,
            Link::Tcp(s) => {
                s.read_exact(&mut buf[..4]).unwrap();
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                let total = if buf[0] >> 6 == 0 {
                    20 + len
                } else {
                    4 + ((len + 3) & !3)
                };
                s.read_exact(&mut buf[4..total]).unwrap();
                total
            }
        }
    }

    /// Send a request and decode the answer.
    pub fn request(&mut self, pkt: &[u8]) -> Message {
        self.send(pkt);
        let mut buf = vec![0u8; 70_000];
        let n = self.recv(&mut buf);
        wire::decode(&buf[..n]).expect("a STUN answer")
    }

    /// A signed request; learns a nonce first if it has none.
    pub fn signed(&mut self, req: Request) -> Message {
        if self.nonce.is_empty() {
            let r = self.request(&Request::new(METHOD_ALLOCATE).transport(17).bytes());
            assert_eq!(wire::error_code(&r), Some(401));
            self.nonce = wire::text(&r, ATTR_NONCE).expect("NONCE in 401");
        }
        let pkt = req.sign(&self.user, &self.realm, &self.pass, &self.nonce);
        self.request(&pkt)
    }

    /// Allocate a UDP relay; returns XOR-RELAYED-ADDRESS.
    pub fn allocate(&mut self) -> SocketAddr {
        let r = self.signed(Request::new(METHOD_ALLOCATE).transport(17));
        assert_eq!(wire::error_code(&r), None, "Allocate failed");
        wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap()
    }

    pub fn channel_bind(&mut self, n: u16, peer: SocketAddr) {
        let r = self.signed(Request::new(METHOD_CHANNEL_BIND).channel(n).peer(peer));
        assert_eq!(wire::error_code(&r), None, "ChannelBind failed");
    }

    /// A ChannelData frame, padded when sent over TCP.
    pub fn channel_data(&self, n: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.extend_from_slice(&n.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        if matches!(self.link, Link::Tcp(_)) {
            while f.len() % 4 != 0 {
                f.push(0);
            }
        }
        f
    }
}

/// A UDP socket on loopback playing the peer.
pub fn peer_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A server config on loopback with port 0, loopback peers allowed, and
/// relay ports from `ports` (an inclusive range).
pub fn loopback_config(
    realm: &str,
    transports: &str,
    ports: (u16, u16),
) -> ferroturn::config::Config {
    let ports = format!("{}-{}", ports.0, ports.1);
    let text = format!(
        r#"
realm = "{realm}"
[server]
workers = 2
[[listen]]
address = "127.0.0.1:0"
transports = {transports}
[relay]
address = "127.0.0.1"
ports = "{ports}"
[auth]
users = {{ alice = "wonderland" }}
[peers]
allow = ["127.0.0.0/8"]
"#
    );
    ferroturn::config::parse(std::path::Path::new("test.toml"), &text).unwrap()
}
