//! A small internet in network namespaces: a "public" namespace with the
//! server on a bridge, and two clients, each behind a router namespace that
//! NATs it onto that bridge.
//!
//! ```text
//!   ftdemo-a 10.201.1.2 --- 10.201.1.1 ftdemo-ra 10.201.0.2 --+
//!                                                              +-- bridge 10.201.0.1 ftdemo-pub (ferroturn)
//!   ftdemo-b 10.201.2.2 --- 10.201.2.1 ftdemo-rb 10.201.0.3 --+
//! ```
//!
//! The addresses exist only inside these namespaces. Every namespace (and
//! with it every veth and bridge) is deleted on drop, after the processes
//! still running in it are killed; leftovers of a crashed run are removed
//! before a new topology is made.

use std::process::Command;
use std::time::Duration;

use super::{Net, wait_for};

/// Names of the namespaces, unique to these tests.
pub const PUBLIC: &str = "ftdemo-pub";
pub const ROUTER_A: &str = "ftdemo-ra";
pub const ROUTER_B: &str = "ftdemo-rb";
pub const CLIENT_A: &str = "ftdemo-a";
pub const CLIENT_B: &str = "ftdemo-b";
const ALL: [&str; 5] = [PUBLIC, ROUTER_A, ROUTER_B, CLIENT_A, CLIENT_B];

/// The public address of the server.
pub const SERVER_IP: &str = "10.201.0.1";
/// The routers' public (WAN) addresses.
pub const ROUTER_A_WAN: &str = "10.201.0.2";
pub const ROUTER_B_WAN: &str = "10.201.0.3";
/// Every address of the topology.
pub const SUBNET: &str = "10.201.0.0/16";

/// How the routers translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// A new random public port for every destination (`MASQUERADE
    /// --random-fully`): endpoint-dependent mapping, which defeats
    /// hole punching.
    Symmetric,
    /// The client's port kept whatever the destination (`MASQUERADE`):
    /// endpoint-independent mapping, with which hole punching works.
    PortPreserving,
}

/// Run `cmd` in namespace `ns` (or here with `None`); panic with its output
/// if it fails.
pub fn sh(ns: Option<&str>, cmd: &str) {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let mut c = match ns {
        Some(ns) => Net::Ns(ns.into()).command(args[0], &args[1..]),
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: cannot run: {e} (iproute2 and iptables are needed)"));
    assert!(
        out.status.success(),
        "{} {cmd}: {}\n{}",
        ns.unwrap_or("(host)"),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Kill every process in `ns` (all were started by these tests) and delete
/// it; its veths and bridge go with it.
pub fn remove(ns: &str) {
    if !exists(ns) {
        return;
    }
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    wait_for(Duration::from_secs(5), || (!exists(ns)).then_some(()));
}

/// The namespaces; all removed on drop.
pub struct Topology {
    _private: (),
}

impl Topology {
    /// Build the topology (removing leftovers of an earlier run first).
    pub fn create() -> Topology {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "network namespaces need root (CI runs the tests as root)"
        );
        for ns in ALL {
            remove(ns);
        }
        // The guard exists before the first namespace, so a failure
        // halfway still removes what was made.
        let t = Topology { _private: () };
        for ns in ALL {
            sh(None, &format!("ip netns add {ns}"));
            sh(Some(ns), "ip link set lo up");
        }
        sh(Some(PUBLIC), "ip link add inet type bridge");
        sh(
            Some(PUBLIC),
            &format!("ip addr add {SERVER_IP}/24 dev inet"),
        );
        sh(Some(PUBLIC), "ip link set inet up");
        for (router, wan, client, lan) in [
            (ROUTER_A, ROUTER_A_WAN, CLIENT_A, "10.201.1"),
            (ROUTER_B, ROUTER_B_WAN, CLIENT_B, "10.201.2"),
        ] {
            let port = format!("to-{router}");
            // Veths are created directly in their namespaces.
            sh(
                None,
                &format!(
                    "ip link add wan netns {router} type veth peer name {port} netns {PUBLIC}"
                ),
            );
            sh(Some(PUBLIC), &format!("ip link set {port} master inet"));
            sh(Some(PUBLIC), &format!("ip link set {port} up"));
            sh(Some(router), &format!("ip addr add {wan}/24 dev wan"));
            sh(Some(router), "ip link set wan up");
            sh(
                None,
                &format!("ip link add lan netns {router} type veth peer name eth0 netns {client}"),
            );
            sh(Some(router), &format!("ip addr add {lan}.1/24 dev lan"));
            sh(Some(router), "ip link set lan up");
            sh(Some(router), "sysctl -q -w net.ipv4.ip_forward=1");
            sh(Some(client), &format!("ip addr add {lan}.2/24 dev eth0"));
            sh(Some(client), "ip link set eth0 up");
            sh(Some(client), &format!("ip route add default via {lan}.1"));
        }
        t
    }

    /// Set both routers' NAT. Each router also drops unsolicited packets
    /// from the WAN, as home routers do (so that they never answer them
    /// with ICMP or track them as connections of their own).
    pub fn set_nat(&self, nat: Nat) {
        for router in [ROUTER_A, ROUTER_B] {
            sh(Some(router), "iptables -t nat -F");
            sh(Some(router), "iptables -F");
            let random = match nat {
                Nat::Symmetric => " --random-fully",
                Nat::PortPreserving => "",
            };
            sh(
                Some(router),
                &format!("iptables -t nat -A POSTROUTING -o wan -j MASQUERADE{random}"),
            );
            for chain in ["INPUT", "FORWARD"] {
                sh(
                    Some(router),
                    &format!(
                        "iptables -A {chain} -i wan -m conntrack --ctstate NEW,INVALID -j DROP"
                    ),
                );
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in ALL {
            remove(ns);
        }
    }
}
