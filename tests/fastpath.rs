//! The kernel fast path (`[fastpath] mode = "on"`, cargo feature
//! `fastpath`), as root, in network namespaces joined by veth pairs:
//!
//! ```text
//!  client ns            server ns (ferroturn, XDP on sc and sp)          peer ns
//!  c0 10.201.1.2 ─── sc 10.201.1.1 (listener)   sp 10.201.2.1 (relay) ─── p0 10.201.2.2, .3
//! ```
//!
//! The server relays bound channels in the kernel (native XDP on the
//! veths, redirecting between them: the far ends have GRO on, which veth
//! needs to take redirected frames). Every namespace is removed when a test
//! ends, however it ends; the server is killed by its PID.

#![cfg(feature = "fastpath")]

mod common;
mod raw;
mod usage_stream;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::strace::Strace;
use ferroturn::io::fastpath::FORCED_SYNC_FLOOR;
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::message::*;
use usage_stream::stream_entries;

const REALM: &str = "fastpath.test";
const USER: &str = "kernel";
const PASS: &str = "path-test-password";
const LISTENER: &str = "10.201.1.1:3478";
const METRICS: &str = "127.0.0.1:9464";
const PEER_IP: &str = "10.201.2.2";
const LISTENER_V6: &str = "[fd01::1]:3478";
const PEER_IP_V6: &str = "fd02::2";
/// An address of the peer namespace the policy denies.
const DENIED_IP: &str = "10.201.2.3";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Run `cmd` (split on spaces) in namespace `ns`; its stdout. Panics with
/// its output if it fails.
fn sh(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (iproute2 is needed)"));
    assert!(
        out.status.success(),
        "{ns}: {cmd}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host(cmd: &str) {
    let out = Command::new(cmd.split_whitespace().next().unwrap())
        .args(cmd.split_whitespace().skip(1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces and the server; all gone on drop.
struct Net {
    client: String,
    server: String,
    peer: String,
    ferroturn: Option<Child>,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(c) = &mut self.ferroturn {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.server, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Net {
    fn new(tag: &str) -> Net {
        let id = format!("{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("ferroturn-fastpath-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let net = Net {
            client: format!("fpc-{id}"),
            server: format!("fps-{id}"),
            peer: format!("fpp-{id}"),
            ferroturn: None,
            dir,
        };
        for ns in [&net.client, &net.server, &net.peer] {
            host(&format!("ip netns add {ns}"));
        }
        let (c, s, p) = (&net.client, &net.server, &net.peer);
        host(&format!(
            "ip link add c0 netns {c} type veth peer name sc netns {s}"
        ));
        host(&format!(
            "ip link add p0 netns {p} type veth peer name sp netns {s}"
        ));
        for (ns, cmds) in [
            (
                c,
                vec![
                    // No duplicate address detection: addresses usable at once.
                    "sysctl -q -w net.ipv6.conf.c0.accept_dad=0",
                    "ip addr add 10.201.1.2/24 dev c0",
                    "ip addr add fd01::2/64 dev c0 nodad",
                    "ip link set c0 up",
                    "ip link set lo up",
                    "ip route add default via 10.201.1.1",
                    "ip -6 route add default via fd01::1",
                    "ethtool -K c0 gro on",
                    // veth leaves a sender's UDP checksum partial (for an
                    // offload that never comes); the program updates
                    // checksums, so senders must write whole ones, as
                    // packets from a real NIC carry.
                    "ethtool -K c0 tx off",
                ],
            ),
            (
                s,
                vec![
                    "sysctl -q -w net.ipv6.conf.sc.accept_dad=0",
                    "sysctl -q -w net.ipv6.conf.sp.accept_dad=0",
                    "ip addr add 10.201.1.1/24 dev sc",
                    "ip addr add 10.201.2.1/24 dev sp",
                    "ip addr add fd01::1/64 dev sc nodad",
                    "ip addr add fd02::1/64 dev sp nodad",
                    "ip link set sc up",
                    "ip link set sp up",
                    "ip link set lo up",
                    "sysctl -q -w net.ipv4.conf.all.forwarding=1",
                    "sysctl -q -w net.ipv6.conf.all.forwarding=1",
                ],
            ),
            (
                p,
                vec![
                    "sysctl -q -w net.ipv6.conf.p0.accept_dad=0",
                    "ip addr add 10.201.2.2/24 dev p0",
                    "ip addr add 10.201.2.3/24 dev p0",
                    "ip addr add fd02::2/64 dev p0 nodad",
                    "ip link set p0 up",
                    "ip link set lo up",
                    "ip route add default via 10.201.2.1",
                    "ip -6 route add default via fd02::1",
                    "ethtool -K p0 gro on",
                    "ethtool -K p0 tx off",
                ],
            ),
        ] {
            for cmd in cmds {
                sh(ns, cmd);
            }
        }
        // Neighbours known before the first relayed packet (the program
        // hands a packet whose next hop is unresolved to the stack).
        // And the other way: the client and peer know the server's MACs.
        let sc_mac = sh(s, "cat /sys/class/net/sc/address");
        let sp_mac = sh(s, "cat /sys/class/net/sp/address");
        for (ns, dev, mac, ips) in [
            (c, "c0", &sc_mac, ["10.201.1.1", "fd01::1"]),
            (p, "p0", &sp_mac, ["10.201.2.1", "fd02::1"]),
        ] {
            for ip in ips {
                sh(
                    ns,
                    &format!(
                        "ip neigh replace {ip} lladdr {} dev {dev} nud permanent",
                        mac.trim()
                    ),
                );
            }
        }
        let c_mac = sh(c, "cat /sys/class/net/c0/address");
        let p_mac = sh(p, "cat /sys/class/net/p0/address");
        sh(
            s,
            &format!(
                "ip neigh replace 10.201.1.2 lladdr {} dev sc nud permanent",
                c_mac.trim()
            ),
        );
        sh(
            s,
            &format!(
                "ip -6 neigh replace fd01::2 lladdr {} dev sc nud permanent",
                c_mac.trim()
            ),
        );
        for ip in ["10.201.2.2", "10.201.2.3", "fd02::2"] {
            sh(
                s,
                &format!(
                    "ip neigh replace {ip} lladdr {} dev sp nud permanent",
                    p_mac.trim()
                ),
            );
        }
        net
    }

    /// Start ferroturn in the server namespace with the fast path on.
    fn start(&mut self, extra: &str) {
        let config = self.dir.join("config.toml");
        let socket = self.dir.join("admin.sock").display().to_string();
        std::fs::write(
            &config,
            format!(
                r#"realm = "{REALM}"
[server]
workers = 1
[[listen]]
address = "{LISTENER}"
transports = ["udp"]
[[listen]]
address = "{LISTENER_V6}"
transports = ["udp"]
[relay]
address = "10.201.2.1"
address_v6 = "fd02::1"
default_family = "same-as-client"
ports = "50000-50999"
[auth]
users = {{ {USER} = "{PASS}" }}
[peers]
allow = ["{PEER_IP}/32", "{PEER_IP_V6}/128"]
[admin]
socket = "{socket}"
[metrics]
address = "{METRICS}"
[fastpath]
mode = "on"
interfaces = ["sc", "sp"]
{extra}
"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server])
            .arg(env!("CARGO_BIN_EXE_ferroturn"))
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.ferroturn = Some(child);
        let ok = wait(Duration::from_secs(10), || {
            self.in_ns(&self.server.clone(), || {
                TcpStream::connect(sa(METRICS)).ok()
            })
        });
        assert!(ok.is_some(), "ferroturn did not start:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Run `f` on a thread inside namespace `ns` (sockets it makes stay
    /// there).
    fn in_ns<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            assert_eq!(
                unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    }

    fn udp(&self, ns: &str, at: &str) -> UdpSocket {
        let at = at.to_owned();
        let s = self.in_ns(ns, move || UdpSocket::bind(at).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    /// A TURN client in the client namespace, of IPv6 (`v6`) or IPv4.
    fn client(&self, v6: bool) -> (RawClient, UdpSocket) {
        let (at, server) = match v6 {
            true => ("[fd01::2]:0", LISTENER_V6),
            false => ("10.201.1.2:0", LISTENER),
        };
        let s = self.udp(&self.client.clone(), at);
        let data = s.try_clone().unwrap();
        (RawClient::udp_on(s, sa(server), REALM, USER, PASS), data)
    }

    /// The value of one sample of /metrics (`name{labels}`), 0 if absent.
    fn metric(&self, series: &str) -> u64 {
        let text = self.in_ns(&self.server.clone(), || {
            common::scrape(sa(METRICS)).unwrap()
        });
        common::sample(&text, series).unwrap_or_else(|| panic!("no {series} on /metrics"))
    }

    /// What the counter `read` shows once it reaches `want`, scraped for up
    /// to 2 s (a scrape shows the kernel's counts as a host last read them,
    /// up to `FORCED_SYNC_FLOOR` before); its last value if it never does.
    /// A counter only grows: once past `want` it is returned at once.
    fn reaching(&self, want: u64, read: impl Fn(&Net) -> u64) -> u64 {
        let mut last = 0;
        let _ = wait(Duration::from_secs(2), || {
            last = read(self);
            (last >= want).then_some(())
        });
        last
    }

    /// Wait out twice the floor on a host's reads of the kernel: the next
    /// scrape then counts every packet relayed before this call (a host
    /// either read the kernel since, or that scrape makes it read). For
    /// counts that must not have moved, where no value to wait for exists.
    fn settle(&self) {
        std::thread::sleep(2 * FORCED_SYNC_FLOOR);
    }

    fn kernel_packets(&self, dir: &str) -> u64 {
        self.metric(&format!(
            "ferroturn_fastpath_relayed_packets_total{{direction=\"{dir}\"}}"
        ))
    }

    fn relayed_packets(&self, dir: &str) -> u64 {
        self.metric(&format!(
            "ferroturn_relayed_packets_total{{direction=\"{dir}\",transport=\"udp\"}}"
        ))
    }

    fn relayed_bytes(&self, dir: &str) -> u64 {
        self.metric(&format!(
            "ferroturn_relayed_bytes_total{{direction=\"{dir}\",transport=\"udp\"}}"
        ))
    }
}

fn wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every datagram `s` receives until it has been quiet for its timeout,
/// at most `max`.
fn drain(s: &UdpSocket, max: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while out.len() < max {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => out.push((buf[..n].to_vec(), from)),
            Err(_) => break,
        }
    }
    out
}

/// The payload of round `r` on channel `n`, `len` bytes (at least 6).
fn payload(n: u16, r: u32, len: usize) -> Vec<u8> {
    let mut p = n.to_be_bytes().to_vec();
    p.extend(r.to_be_bytes());
    p.extend((0..len - 6).map(|i| (i as u8) ^ (r as u8)));
    p
}

/// One allocation with channels to peers on consecutive ports.
struct Session {
    client: RawClient,
    data: UdpSocket,
    relay: SocketAddr,
    /// Channel number and peer socket, each.
    channels: Vec<(u16, UdpSocket)>,
}

fn session(net: &Net, channels: u16, first_port: u16) -> Session {
    session_of(net, false, channels, first_port)
}

fn session_of(net: &Net, v6: bool, channels: u16, first_port: u16) -> Session {
    let (mut client, data) = net.client(v6);
    let relay = client.allocate();
    assert_eq!(relay.is_ipv6(), v6);
    let mut chans = Vec::new();
    for i in 0..channels {
        let n = 0x4000 + i;
        let at = match v6 {
            true => format!("[{PEER_IP_V6}]:{}", first_port + i),
            false => format!("{PEER_IP}:{}", first_port + i),
        };
        let peer = net.udp(&net.peer.clone(), &at);
        client.channel_bind(n, peer.local_addr().unwrap());
        chans.push((n, peer));
    }
    Session {
        client,
        data,
        relay,
        channels: chans,
    }
}

/// `rounds` datagrams each way on every channel of `sessions`, checked
/// byte for byte at the far end; the packets and data bytes sent each way.
fn exchange(sessions: &[Session], rounds: u32, len: usize) -> u64 {
    let mut sent = 0;
    for r in 0..rounds {
        for s in sessions {
            for (n, _) in &s.channels {
                s.data
                    .send_to(
                        &s.client.channel_data(*n, &payload(*n, r, len)),
                        s.client.server,
                    )
                    .unwrap();
                sent += 1;
            }
        }
        // Each peer got exactly its round, from the relay, unwrapped.
        for s in sessions {
            for (n, peer) in &s.channels {
                let got = drain(peer, 1);
                assert_eq!(got.len(), 1, "channel {n:#x} round {r}: to the peer");
                assert_eq!(got[0], (payload(*n, r, len), s.relay));
                peer.send_to(&payload(*n, r + 1_000_000, len), s.relay)
                    .unwrap();
            }
        }
        // And the client its peers' answers, as ChannelData from the
        // listener, unpadded.
        for s in sessions {
            let got = drain(&s.data, s.channels.len());
            let want: BTreeSet<Vec<u8>> = s
                .channels
                .iter()
                .map(|(n, _)| s.client.channel_data(*n, &payload(*n, r + 1_000_000, len)))
                .collect();
            let got_set: BTreeSet<Vec<u8>> = got.iter().map(|(d, _)| d.clone()).collect();
            assert!(got.iter().all(|(_, from)| *from == s.client.server));
            assert_eq!(got.len(), want.len(), "round {r}: to the client");
            assert_eq!(got_set, want, "round {r}: to the client");
        }
    }
    sent
}

#[test]
fn bound_channels_are_relayed_in_the_kernel_both_ways_and_counted_exactly() {
    let mut net = Net::new("r");
    net.start("[limits]\nallocations_per_user = 11");
    assert_eq!(
        net.metric("ferroturn_fastpath_attached{mode=\"native\"}"),
        1,
        "native XDP on the veths"
    );
    let len = 100;
    // One channel.
    let one = [session(&net, 1, 9000)];
    let sent = exchange(&one, 200, len);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 1);
    // Every packet counted once, whichever path carried it: what the
    // client sent, exactly.
    let bytes = sent * len as u64;
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_peer")), sent);
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_client")), sent);
    assert_eq!(net.reaching(bytes, |n| n.relayed_bytes("to_peer")), bytes);
    assert_eq!(net.reaching(bytes, |n| n.relayed_bytes("to_client")), bytes);
    // The kernel carried them (a first packet may have waited for a
    // neighbour entry in userspace). Its counts are all read: the totals
    // above hold them.
    let k = net.kernel_packets("to_peer");
    assert!(k >= sent - 2, "{k} of {sent} to peers in the kernel");
    assert!(net.kernel_packets("to_client") >= sent - 2);

    // 100 channels: 10 allocations of 10 (the default per allocation).
    let many: Vec<Session> = (0..10)
        .map(|i| session(&net, 10, 10_000 + i * 10))
        .collect();
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 101);
    let sent2 = exchange(&many, 20, len);
    assert_eq!(sent2, 2000);
    let total = sent + sent2;
    let bytes = total * len as u64;
    assert_eq!(net.reaching(total, |n| n.relayed_packets("to_peer")), total);
    assert_eq!(
        net.reaching(total, |n| n.relayed_packets("to_client")),
        total
    );
    assert_eq!(net.reaching(bytes, |n| n.relayed_bytes("to_peer")), bytes);
    let k = net.kernel_packets("to_client");
    assert!(k >= total - 120, "{k} of {total} to clients in the kernel");
    assert_eq!(
        net.metric("ferroturn_fastpath_relayed_bytes_total{direction=\"to_peer\"}"),
        net.kernel_packets("to_peer") * len as u64
    );
}

#[test]
fn only_what_the_engine_holds_crosses_in_the_kernel() {
    let mut net = Net::new("h");
    net.start("");
    let mut s = session(&net, 1, 9000);
    exchange(std::slice::from_ref(&s), 5, 50);
    net.settle();
    let before = (
        net.kernel_packets("to_peer"),
        net.relayed_packets("to_peer"),
    );

    // ChannelData on a channel never bound: neither path relays it.
    for r in 0..20 {
        let f = s.client.channel_data(0x4100, &payload(0x4100, r, 50));
        s.data.send_to(&f, sa(LISTENER)).unwrap();
    }
    // A peer the policy denies: no permission, no channel, nothing sent.
    let denied = net.udp(&net.peer.clone(), &format!("{DENIED_IP}:9000"));
    let r = s.client.signed(
        Request::new(METHOD_CHANNEL_BIND)
            .channel(0x4101)
            .peer(denied.local_addr().unwrap()),
    );
    assert_eq!(wire::error_code(&r), Some(403));
    for r in 0..20 {
        let f = s.client.channel_data(0x4101, &payload(0x4101, r, 50));
        s.data.send_to(&f, sa(LISTENER)).unwrap();
    }
    // A datagram from the bound peer's IP but another port: a Data
    // indication, from userspace.
    let other = net.udp(&net.peer.clone(), &format!("{PEER_IP}:9100"));
    let r = s
        .client
        .signed(Request::new(METHOD_CREATE_PERMISSION).peer(other.local_addr().unwrap()));
    assert_eq!(wire::error_code(&r), None);
    other.send_to(b"from another port", s.relay).unwrap();
    let got = drain(&s.data, 2);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0[0] >> 6,
        0,
        "a STUN Data indication, not ChannelData"
    );

    assert!(drain(&denied, 1).is_empty(), "the denied peer got nothing");
    assert!(
        drain(&s.channels[0].1, 1).is_empty(),
        "nothing strayed to the bound peer"
    );
    net.settle();
    let after = (
        net.kernel_packets("to_peer"),
        net.relayed_packets("to_peer"),
    );
    assert_eq!(
        after, before,
        "no packet relayed for a channel the engine does not hold"
    );
}

#[test]
fn deleting_the_allocation_stops_kernel_relaying_at_once() {
    let mut net = Net::new("d");
    net.start("");
    let mut s = session(&net, 1, 9000);
    exchange(std::slice::from_ref(&s), 5, 50);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 1);
    // Refresh with lifetime 0 (RFC 8656 §7.3): no ChannelBind says so, the
    // allocation's end takes its channels out.
    let r = s.client.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 0);
    assert_nothing_relayed(&s, "the delete");
}

/// Datagrams each way on every channel of `s` reach neither end (data to
/// peers, ChannelData to the client), after `what`.
fn assert_nothing_relayed(s: &Session, what: &str) {
    for (n, peer) in &s.channels {
        for r in 0..10 {
            let f = s.client.channel_data(*n, &payload(*n, r, 50));
            s.data.send_to(&f, s.client.server).unwrap();
            peer.send_to(&payload(*n, r, 50), s.relay).unwrap();
        }
    }
    for (n, peer) in &s.channels {
        assert!(
            drain(peer, 1).is_empty(),
            "the peer of {n:#x} got data after {what}"
        );
    }
    let cd: Vec<_> = drain(&s.data, 10 * s.channels.len())
        .into_iter()
        .filter(|(d, _)| d[0] >> 6 == 1)
        .collect();
    assert!(cd.is_empty(), "the client got ChannelData after {what}");
}

/// The BPF link ids ferroturn (`pid`) holds, from its descriptors.
fn links_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if !target.to_string_lossy().contains("bpf_link") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("link_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids
}

fn xdp_on(net: &Net, dev: &str) -> bool {
    sh(&net.server, &format!("ip -d link show dev {dev}")).contains("xdp")
}

#[test]
fn detached_mid_stream_traffic_goes_on_in_userspace_and_a_kill_leaves_nothing_attached() {
    let mut net = Net::new("k");
    net.start("");
    let s = session(&net, 1, 9000);
    let pid = net.ferroturn.as_ref().unwrap().id();
    exchange(std::slice::from_ref(&s), 50, 60);
    net.settle();
    let kernel = net.kernel_packets("to_peer");
    assert!(kernel >= 48);
    // Take the program off both interfaces behind ferroturn's back.
    let links = links_of(pid);
    assert_eq!(links.len(), 2, "one link per interface");
    for id in links {
        host(&format!("bpftool link detach id {id}"));
    }
    assert!(!xdp_on(&net, "sc") && !xdp_on(&net, "sp"));
    // Every datagram still arrives, each way, now through ferroturn's
    // threads, which still hold the channel.
    let sent = exchange(std::slice::from_ref(&s), 50, 60);
    net.settle();
    assert_eq!(
        net.kernel_packets("to_peer"),
        kernel,
        "nothing more in the kernel"
    );
    let total = 50 + sent;
    assert_eq!(net.reaching(total, |n| n.relayed_packets("to_peer")), total);
    assert_eq!(
        net.reaching(total, |n| n.relayed_packets("to_client")),
        total
    );

    // A fresh server, killed with SIGKILL: its links go with it.
    let mut c = net.ferroturn.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    net.start("");
    assert!(xdp_on(&net, "sc") && xdp_on(&net, "sp"));
    let pid = net.ferroturn.as_ref().unwrap().id();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    net.ferroturn.take().unwrap().wait().unwrap();
    let gone = wait(Duration::from_secs(5), || {
        (!xdp_on(&net, "sc") && !xdp_on(&net, "sp")).then_some(())
    });
    assert!(gone.is_some(), "XDP still attached after SIGKILL");
}

#[test]
fn ipv6_channels_are_relayed_in_the_kernel_too() {
    let mut net = Net::new("s");
    net.start("");
    let sessions: Vec<Session> = (0..2)
        .map(|i| session_of(&net, true, 5, 9000 + i * 5))
        .collect();
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 10);
    let len = 333;
    let sent = exchange(&sessions, 40, len);
    let bytes = sent * len as u64;
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_peer")), sent);
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_client")), sent);
    assert_eq!(net.reaching(bytes, |n| n.relayed_bytes("to_client")), bytes);
    let k = net.kernel_packets("to_peer");
    assert!(k >= sent - 10, "{k} of {sent} to IPv6 peers in the kernel");
    assert!(net.kernel_packets("to_client") >= sent - 10);
    // And an IPv4 session beside them, on the same program.
    let v4 = [session(&net, 1, 9500)];
    let sent4 = exchange(&v4, 20, len);
    let total = sent + sent4;
    assert_eq!(net.reaching(total, |n| n.relayed_packets("to_peer")), total);
}

#[test]
fn revoking_the_user_stops_kernel_relaying_at_once() {
    let mut net = Net::new("v");
    net.start("");
    let s = session(&net, 3, 9000);
    exchange(std::slice::from_ref(&s), 5, 50);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 3);
    let out = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("revoke")
        .arg("-c")
        .arg(net.dir.join("config.toml"))
        .args(["--user", USER, "--until", "1h"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 0);
    let kernel = net.kernel_packets("to_peer");
    assert_nothing_relayed(&s, "the revocation");
    net.settle();
    assert_eq!(net.kernel_packets("to_peer"), kernel);
}

#[test]
fn the_packet_rate_ceiling_holds_in_the_kernel() {
    let mut net = Net::new("c");
    let rate = 400u64;
    net.start(&format!("[limits]\npacket_rate = {rate}\nbandwidth = 0"));
    let s = session(&net, 1, 9000);
    // 1,200 packets at about 1,000 a second: over the ceiling throughout.
    let sent = 1200;
    let got = over_the_ceiling(&s, sent, rate);
    // The drops are counted as the userspace path counts its own.
    let dropped = u64::from(sent) - got;
    let limited = net.reaching(dropped, |n| {
        n.metric("ferroturn_rate_limited_packets_total")
    });
    assert_eq!(limited, dropped);
    assert_eq!(net.reaching(got, |n| n.relayed_packets("to_peer")), got);
}

/// Send `count` packets on the first channel of `s` at about 1,000 a
/// second, against a packet-rate ceiling of `rate`; how many reached the
/// peer, checked to be a full bucket (one second of the rate) and the rate
/// since, within 5 %.
fn over_the_ceiling(s: &Session, count: u32, rate: u64) -> u64 {
    let (n, peer) = &s.channels[0];
    peer.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let mut got = 0u64;
    for r in 0..count {
        let f = s.client.channel_data(*n, &payload(*n, r, 40));
        s.data.send_to(&f, s.client.server).unwrap();
        if r % 10 == 9 {
            std::thread::sleep(Duration::from_millis(10));
            got += drain_nowait(peer);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    got += drain_nowait(peer);
    let allowed = rate as f64 * (1.0 + elapsed);
    eprintln!("sent {count} in {elapsed:.2} s, {got} passed, {allowed:.0} allowed");
    assert!(
        count as f64 > allowed * 1.2,
        "the sender did not exceed the ceiling"
    );
    let off = (got as f64 - allowed).abs() / allowed;
    assert!(
        off <= 0.05,
        "{got} passed, {allowed:.0} allowed: {:.1} % off",
        off * 100.0
    );
    got
}

/// What `s` holds now, without waiting.
fn drain_nowait(s: &UdpSocket) -> u64 {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    s.set_nonblocking(false).unwrap();
    n
}

#[test]
fn mode_on_refuses_to_start_when_it_cannot_attach_and_says_why() {
    let net = Net::new("a");
    let config = net.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"realm = "{REALM}"
[[listen]]
address = "{LISTENER}"
transports = ["udp"]
[relay]
address = "10.201.2.1"
ports = "50000-50999"
[auth]
users = {{ {USER} = "{PASS}" }}
[fastpath]
mode = "on"
interfaces = ["sc", "nosuch0"]
"#
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server])
        .arg(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("--config")
        .arg(&config);
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "it started:\n{text}");
    assert!(
        text.contains(&format!(
            "{}: fastpath.interfaces: interface nosuch0: No such device",
            config.display()
        )),
        "{text}"
    );
    // What it attached before the failure went with it.
    assert!(!xdp_on(&net, "sc"), "XDP left on sc");
}

#[test]
fn a_reload_brings_new_ceilings_into_the_kernel() {
    let mut net = Net::new("l");
    net.start("");
    let s = session(&net, 1, 9000);
    exchange(std::slice::from_ref(&s), 5, 40);
    // The same file with a packet-rate ceiling of 100 a second, reloaded.
    let config = net.dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[limits]\npacket_rate = 100\n")).unwrap();
    let pid = net.ferroturn.as_ref().unwrap().id();
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reloaded = wait(Duration::from_secs(10), || {
        net.log().contains("configuration reloaded").then_some(())
    });
    assert!(reloaded.is_some(), "no reload in the log:\n{}", net.log());
    // A scrape's report reaches the host after the reload's update did.
    net.metric("ferroturn_fastpath_channels");
    let got = over_the_ceiling(&s, 600, 100);
    assert!(
        net.reaching(got, |n| n.kernel_packets("to_peer")) >= got,
        "carried in the kernel"
    );
}

/// Datagrams each way on channel `n` of `s`; how many reached the peer
/// and how many ChannelData the client got.
fn push_both_ways(s: &Session, rounds: u32) -> (usize, usize) {
    let (n, peer) = &s.channels[0];
    for r in 0..rounds {
        let f = s.client.channel_data(*n, &payload(*n, r, 50));
        s.data.send_to(&f, s.client.server).unwrap();
        peer.send_to(&payload(*n, r, 50), s.relay).unwrap();
    }
    let to_peer = drain(peer, rounds as usize).len();
    let to_client = drain(&s.data, rounds as usize)
        .into_iter()
        .filter(|(d, _)| d[0] >> 6 == 1)
        .count();
    (to_peer, to_client)
}

#[test]
fn an_unrefreshed_channel_stops_in_the_kernel_at_its_expiry_then_leaves_it() {
    // A channel and its permission live 3 s (`[allocation]`
    // channel_lifetime, permission_lifetime; RFC 8656 §9, §12) and are
    // never refreshed.
    let mut net = Net::new("e");
    net.start("[allocation]\npermission_lifetime = 3\nchannel_lifetime = 3");
    let s = session(&net, 1, 9000);
    let bound = Instant::now();
    let sent = exchange(std::slice::from_ref(&s), 5, 50);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 1);
    // Once every packet is counted (the kernel's among them), its counts
    // as of now.
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_peer")), sent);
    assert_eq!(net.reaching(sent, |n| n.relayed_packets("to_client")), sent);
    let before = net.kernel_packets("to_peer");
    let before_client = net.kernel_packets("to_client");
    assert!(before >= 3, "{before} of 5 in the kernel");

    // Stop the server: from now on only the kernel can relay, and nothing
    // in userspace removes the channel.
    let pid = net.ferroturn.as_ref().unwrap().id() as i32;
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let resume = Resume(pid);
    // Still live: the kernel carries every packet, both ways.
    assert!(
        bound.elapsed() < Duration::from_millis(2500),
        "setup too slow"
    );
    assert_eq!(push_both_ways(&s, 20), (20, 20), "the kernel relays alone");
    // Past the entry's own expiry: the program hands packets to the
    // (stopped) server, none crosses.
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(bound.elapsed()) + Duration::from_millis(300),
    );
    assert_eq!(
        push_both_ways(&s, 20),
        (0, 0),
        "a channel past its expiry relayed in the kernel"
    );

    // The server resumes: the engine reports the expiry, the channel
    // leaves the kernel, and what waited in its socket is not relayed
    // either (the engine holds no channel or permission).
    drop(resume);
    let gone = wait(Duration::from_secs(5), || {
        (net.metric("ferroturn_fastpath_channels") == 0).then_some(())
    });
    assert!(gone.is_some(), "the channel stayed in the kernel");
    assert_nothing_relayed(&s, "the expiry");
    // The kernel's counts stopped with the 20 it carried alone.
    assert_eq!(net.kernel_packets("to_peer"), before + 20);
    assert_eq!(net.kernel_packets("to_client"), before_client + 20);
}

#[test]
fn both_paths_of_one_allocation_share_one_ceiling() {
    // A packet-rate ceiling of 200/s; the client sends up to 300/s on a
    // bound channel (the kernel) and as many in Send indications to another port
    // of the peer (userspace) at once, for 8 s. Each path debits the
    // other's bucket with what it relayed at every exchange (once a
    // second), so together they pass at most the ceiling over the time
    // plus 3 s of it: both buckets' bursts (1 s each) and one exchange
    // interval not yet debited. Apart, they would pass about twice it.
    let rate = 200u64;
    let mut net = Net::new("b");
    net.start(&format!("[limits]\npacket_rate = {rate}\nbandwidth = 0"));
    let mut s = session(&net, 1, 9000);
    let other = net.udp(&net.peer.clone(), &format!("{PEER_IP}:9001"));
    let r = s
        .client
        .signed(Request::new(METHOD_CREATE_PERMISSION).peer(other.local_addr().unwrap()));
    assert_eq!(wire::error_code(&r), None);
    let (n, peer) = (s.channels[0].0, &s.channels[0].1);
    let kernel = net.kernel_packets("to_peer");
    let started = Instant::now();
    let (mut by_kernel, mut by_userspace, mut sent) = (0u64, 0u64, 0u64);
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs(8) {
        for i in 0..3 {
            let d = payload(n, round * 3 + i, 40);
            s.data
                .send_to(&s.client.channel_data(n, &d), s.client.server)
                .unwrap();
            let ind = Request::indication(METHOD_SEND)
                .peer(other.local_addr().unwrap())
                .attr(stun::attributes::ATTR_DATA, &d)
                .bytes();
            s.data.send_to(&ind, s.client.server).unwrap();
            sent += 2;
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(10));
        if round.is_multiple_of(10) {
            by_kernel += drain_nowait(peer);
            by_userspace += drain_nowait(&other);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    by_kernel += drain_nowait(peer);
    by_userspace += drain_nowait(&other);
    let got = by_kernel + by_userspace;
    let bound = rate as f64 * (elapsed + 3.0);
    eprintln!(
        "sent {sent} in {elapsed:.2} s: {by_kernel} on the channel, {by_userspace} by Send, \
         {got} in all; bound {bound:.0}, apart about {:.0}",
        2.0 * rate as f64 * (elapsed + 1.0)
    );
    assert!(
        sent as f64 / 2.0 > rate as f64 * (elapsed + 1.0) * 1.2,
        "the sender did not push each path over the ceiling"
    );
    assert!(
        got as f64 <= bound,
        "{got} passed: over the ceiling's {bound:.0}"
    );
    // Both paths carried their share, the channel in the kernel.
    assert!(
        by_kernel > rate && by_userspace > rate,
        "{by_kernel} / {by_userspace}"
    );
    let want = kernel + by_kernel - 2;
    assert!(net.reaching(want, |n| n.kernel_packets("to_peer")) - kernel >= by_kernel - 2);
}

/// How many `bpf` system calls a finished `strace -f -c -e trace=bpf` saw.
fn bpf_calls(summary: &str) -> u64 {
    // "% time  seconds  usecs/call  calls  [errors]  syscall"
    summary
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.last() == Some(&"bpf"))
        .map_or(0, |w| w[3].parse().unwrap())
}

#[test]
fn a_scraper_in_a_loop_makes_each_thread_read_the_kernel_at_most_ten_times_a_second() {
    // Each /metrics scrape asks every thread for a report, and a thread
    // holding channels in the kernel reads their counts for it: one
    // `bpf` call per channel slot and per allocation slot. Reads come at
    // most ten times a second (FORCED_SYNC_FLOOR), whatever the scrape
    // rate.
    let mut net = Net::new("m");
    net.start("");
    let s = session(&net, 10, 9000);
    exchange(std::slice::from_ref(&s), 2, 50);
    assert_eq!(net.metric("ferroturn_fastpath_channels"), 10);
    // One allocation of 10 channels: 11 slots a read.
    let per_read = 11u64;
    let pid = net.ferroturn.as_ref().unwrap().id();
    // The window starts once strace is attached (that may take a while):
    // the calls it counts are all inside it.
    let trace = Strace::attach(
        pid,
        &["-f", "-c", "-e", "trace=bpf"],
        &net.dir.join("strace.txt"),
    );
    let started = Instant::now();
    let scrapes = 300u64;
    net.in_ns(&net.server.clone(), move || {
        for _ in 0..scrapes {
            let text = common::scrape(sa(METRICS)).unwrap();
            assert!(text.contains("ferroturn_fastpath_channels 10"));
        }
    });
    let calls = bpf_calls(&trace.finish());
    let window = started.elapsed();
    // Reads are 100 ms apart at least (the periodic one, a second after
    // the last, too), as the README promises: at most this many in the
    // window.
    let reads = (window.as_secs_f64() / 0.1) as u64 + 2;
    eprintln!(
        "{scrapes} scrapes in {window:?}: {calls} bpf calls, at most {} allowed, {} without a floor",
        reads * per_read,
        scrapes * per_read
    );
    assert!(calls >= per_read, "the first scrape read the kernel");
    // The scrapes came fast enough that a server without the floor would
    // fail the bound below by far.
    assert!(
        reads * 4 < scrapes,
        "{scrapes} scrapes took {window:?}: too slow to tell"
    );
    assert!(
        calls <= reads * per_read,
        "{calls} bpf calls for {scrapes} scrapes in {window:?}"
    );
}

/// A Redis in namespace `ns`, on 127.0.0.1:`port`; killed by its PID on
/// drop.
struct NsRedis {
    child: Child,
    ns: String,
    port: u16,
}

impl NsRedis {
    fn start(ns: &str, dir: &std::path::Path, port: u16) -> NsRedis {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "redis-server"])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let r = NsRedis {
            child,
            ns: ns.to_owned(),
            port,
        };
        let up = wait(Duration::from_secs(10), || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "redis-cli",
                    "-p",
                    &port.to_string(),
                    "PING",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("PONG")
                .then_some(())
        });
        assert!(up.is_some(), "redis-server did not start");
        r
    }

    fn cli(&self, args: &str) -> String {
        sh(&self.ns, &format!("redis-cli -p {} {args}", self.port))
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_final_usage_event_holds_the_kernels_last_counts() {
    // Usage events to a Redis (README "Usage events"): an allocation
    // relays in the kernel and ends within the second between two reads
    // of the kernel's counts; its `deleted` event holds every packet and
    // byte all the same, as they are read when its channels leave.
    let mut net = Net::new("g");
    let redis = NsRedis::start(&net.server.clone(), &net.dir, 6390);
    net.start(
        "[cluster]\nredis = \"redis://127.0.0.1:6390/0\"\nnode = \"fastpath\"\nheartbeat = 60",
    );
    let up = wait(Duration::from_secs(10), || {
        (net.metric("ferroturn_cluster_up") == 1).then_some(())
    });
    assert!(up.is_some(), "no cluster:\n{}", net.log());
    let mut s = session(&net, 1, 9000);
    let kernel = net.kernel_packets("to_peer");
    let (rounds, len) = (50u64, 100usize);
    exchange(std::slice::from_ref(&s), rounds as u32, len);
    let r = s.client.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None);
    assert!(
        net.kernel_packets("to_peer") - kernel >= rounds - 2,
        "carried in the kernel"
    );
    let stream = format!("ferroturn/realm/{REALM}/usage");
    let deleted = wait(Duration::from_secs(10), || {
        let text = redis.cli(&format!("XREVRANGE {stream} + -"));
        stream_entries(&text)
            .into_iter()
            .find(|e| e.get("event").is_some_and(|v| v == "deleted"))
    });
    let e = deleted.unwrap_or_else(|| panic!("no deleted event:\n{}", net.log()));
    let bytes = rounds * len as u64;
    for (field, want) in [
        ("peer_sentp", rounds),
        ("peer_sentb", bytes),
        ("peer_rcvp", rounds),
        ("peer_rcvb", bytes),
        ("rcvp", rounds),
        ("sentp", rounds),
        // The client's frames: ChannelData, 4 bytes of header each.
        ("rcvb", bytes + 4 * rounds),
        ("sentb", bytes + 4 * rounds),
    ] {
        assert_eq!(
            e.get(field).map(String::as_str),
            Some(want.to_string().as_str()),
            "{field}: {e:?}"
        );
    }
}
