//! This host's addresses change while the server runs (DHCP, SLAAC, a
//! floating IP): an address that arrives is judged as the host's own within
//! seconds, also for permissions made before it arrived. Run in a network
//! namespace of the test's own, so that adding an address touches nothing
//! else; needs root and iproute2 (installed by tests/run.sh).

mod common;
mod raw;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::attributes::*;
use stun::message::*;

/// A network namespace with only `lo`, removed (with the server) on drop.
struct Ns {
    name: String,
    server: Option<Child>,
}

impl Ns {
    fn new() -> Ns {
        let name = format!("ft-host-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Ns { name, server: None }
    }

    /// Move the calling thread into the namespace: sockets it makes live there.
    fn enter(&self) {
        let f = fs::File::open(format!("/run/netns/{}", self.name)).expect("open the netns");
        // SAFETY: setns on a valid namespace fd changes this thread only.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP service that would answer whatever reaches it.
fn service(at: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(at).expect("bind the service");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn reached(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf).is_ok()
}

fn send_indication(c: &mut RawClient, peer: SocketAddr, data: &[u8]) {
    c.send(
        &Request::indication(METHOD_SEND)
            .peer(peer)
            .attr(ATTR_DATA, data)
            .bytes(),
    );
}

#[test]
fn an_address_added_while_running_is_judged_as_this_hosts() {
    let mut ns = Ns::new();
    let dir = common::TempDir::new("host");
    let (config, log) = (
        dir.path().join("ferroturn.toml"),
        dir.path().join("ferroturn.log"),
    );
    // Nothing allowed: another host's public address is reachable, this
    // host's are not (but for live relay ports).
    fs::write(
        &config,
        format!(
            "realm = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:3478\"\ntransports = [\"udp\"]\n\
             [relay]\naddress = \"0.0.0.0\"\npublic_address = \"127.0.0.1\"\nports = \"40000-40099\"\n\
             [auth]\nusers = {{ {} = \"{}\" }}\n[log]\nlevel = \"debug\"\n",
            common::REALM,
            common::USER,
            "not-the-example",
        ),
    )
    .unwrap();
    let file = fs::File::create(&log).unwrap();
    ns.server = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_ferroturn"),
                "--config",
            ])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start ferroturn in the namespace"),
    );
    let name = ns.name.clone();
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let wait_log = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the log:\n{}",
                log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_log("ready");
    let ns_ref = &ns;
    std::thread::scope(|s| {
        s.spawn(|| {
            ns_ref.enter();
            let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
            let mut c = RawClient::udp(server, common::REALM, common::USER, "not-the-example");
            c.allocate();
            // 9.9.9.9 is another host's address now: permitted.
            let later: SocketAddr = "9.9.9.9:5353".parse().unwrap();
            let r = c.signed(Request::new(METHOD_CREATE_PERMISSION).peer(later));
            assert_eq!(wire::error_code(&r), None, "another host's address");
            // Then it becomes this host's, with a service on it.
            ip(&["-n", &name, "addr", "add", "9.9.9.9/32", "dev", "lo"]);
            let svc = service(later);
            wait_log("this host's addresses changed");
            // The line is logged as the new policy is sent; each UDP shard
            // takes it from its own queue at its next wake-up, which on a
            // loaded machine may come a little after the line.
            std::thread::sleep(Duration::from_millis(500));
            // The permission made before no longer reaches it...
            send_indication(&mut c, later, b"to the new address");
            assert!(
                !reached(&svc),
                "a service on an address added after start was reached"
            );
            // ...and a new one is refused, for it and for the server's
            // own listener port on it.
            for peer in [later, "9.9.9.9:3478".parse().unwrap()] {
                let r = c.signed(Request::new(METHOD_CREATE_PERMISSION).peer(peer));
                assert_eq!(wire::error_code(&r), Some(403), "{peer}");
            }
            // When it goes away again, it is another host's once more.
            ip(&["-n", &name, "addr", "del", "9.9.9.9/32", "dev", "lo"]);
            drop(svc);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = c.signed(Request::new(METHOD_CREATE_PERMISSION).peer(later));
                if wire::error_code(&r).is_none() {
                    break;
                }
                assert!(Instant::now() < deadline, "9.9.9.9 stayed this host's");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    });
    let text = log_text();
    assert!(!text.contains("panicked"), "{text}");
}
