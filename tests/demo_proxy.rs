//! A corporate network, for real: the browsers reach the outside only
//! through Debian's `squid`, which (as its default configuration does)
//! tunnels CONNECT to port 443 only, so WebSocket (which Chromium always
//! tunnels through a proxy) is refused, and no UDP leaves the network.
//!
//! ```text
//!   ftcorp-lan 10.202.1.2 --- 10.202.1.1 ftcorp-gw 10.202.0.2 --- 10.202.0.1 ftcorp-srv
//!   (Chromium, chromedriver)   (squid; forwards nothing)          (ferroturn demo:
//!                                                                   HTTP :8090, TURN :3478,
//!                                                                   TURN over TLS :443)
//! ```
//!
//! 1. The call page with its fallback off (`signaling=websocket`): its
//!    WebSocket to /signal is refused by the proxy and the page cannot
//!    signal at all.
//! 2. The call page as shipped: WebSocket fails, it falls back to STOMP
//!    over SockJS (an HTTP transport the proxy passes), two pages in one
//!    room with "relay only" connect, and their data reaches ferroturn only
//!    over `turns:` on port 443 through the proxy's CONNECT.
//!
//! Every namespace is deleted on drop, after the processes in it are
//! killed. Needs root, iproute2, iptables, squid, openssl, chromium and
//! chromium-driver (tests/run.sh installs them).

mod browser;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use browser::netns::{remove, sh};
use browser::webdriver::{Driver, Session};
use browser::{Demo, DemoConfig, Net, Proc, SECRET, STATIC_PASSWORD, TempDir, wait_for};

const SRV: &str = "ftcorp-srv";
const GW: &str = "ftcorp-gw";
const LAN: &str = "ftcorp-lan";
const SERVER_IP: &str = "10.202.0.1";
const PROXY: &str = "10.202.1.1:3128";
const HTTP_PORT: u16 = 8090;

/// The three namespaces; deleted (with everything running in them) on drop.
struct Corp;

impl Corp {
    fn create() -> Corp {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "network namespaces need root"
        );
        for ns in [SRV, GW, LAN] {
            remove(ns);
        }
        let corp = Corp;
        for ns in [SRV, GW, LAN] {
            sh(None, &format!("ip netns add {ns}"));
            sh(Some(ns), "ip link set lo up");
        }
        sh(
            None,
            &format!("ip link add wan netns {GW} type veth peer name eth0 netns {SRV}"),
        );
        sh(
            None,
            &format!("ip link add lan netns {GW} type veth peer name eth0 netns {LAN}"),
        );
        sh(Some(SRV), &format!("ip addr add {SERVER_IP}/24 dev eth0"));
        sh(Some(SRV), "ip link set eth0 up");
        sh(Some(GW), "ip addr add 10.202.0.2/24 dev wan");
        sh(Some(GW), "ip addr add 10.202.1.1/24 dev lan");
        sh(Some(GW), "ip link set wan up");
        sh(Some(GW), "ip link set lan up");
        // The gateway routes nothing: the proxy is the only way out.
        sh(Some(GW), "sysctl -q -w net.ipv4.ip_forward=0");
        sh(Some(GW), "iptables -P FORWARD DROP");
        sh(Some(LAN), "ip addr add 10.202.1.2/24 dev eth0");
        sh(Some(LAN), "ip link set eth0 up");
        sh(Some(LAN), "ip route add default via 10.202.1.1");
        // And no UDP leaves the LAN, whatever the route.
        sh(Some(LAN), "iptables -A OUTPUT -o eth0 -p udp -j DROP");
        corp
    }
}

impl Drop for Corp {
    fn drop(&mut self) {
        for ns in [LAN, GW, SRV] {
            remove(ns);
        }
    }
}

/// squid in the gateway: plain HTTP from the LAN to the server's network,
/// CONNECT to port 443 only (squid's default rule), nothing beyond the
/// server's network.
fn start_squid(dir: &Path) -> Proc {
    let logs = dir.join("squid");
    fs::create_dir_all(&logs).unwrap();
    // squid drops to the `proxy` user and must still write its logs.
    let status = Command::new("chown")
        .arg("proxy")
        .arg(&logs)
        .status()
        .unwrap();
    assert!(status.success(), "chown proxy {}", logs.display());
    let conf = dir.join("squid.conf");
    fs::write(
        &conf,
        format!(
            "http_port {PROXY}
acl lan src 10.202.1.0/24
acl to_srv dst 10.202.0.0/24
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny !to_srv
http_access deny CONNECT !SSL_ports
http_access allow lan
http_access deny all
cache deny all
shutdown_lifetime 1 seconds
pid_filename {logs}/squid.pid
access_log stdio:{logs}/access.log
cache_log {logs}/cache.log
",
            logs = logs.display()
        ),
    )
    .unwrap();
    let cmd = Net::Ns(GW.into()).command("squid", &["-N", "-f", conf.to_str().unwrap()]);
    let mut proc = Proc::spawn("squid", cmd, &dir.join("squid.out"));
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let up = wait_for(Duration::from_secs(20), || {
        if !proc.running() {
            return Some(false);
        }
        Net::Ns(LAN.into())
            .connect(proxy, Duration::from_secs(1))
            .ok()
            .map(|_| true)
    });
    assert_eq!(
        up,
        Some(true),
        "squid did not start:\n{}",
        fs::read_to_string(dir.join("squid.out")).unwrap_or_default()
    );
    proc
}

/// The demo in the server namespace, with a TLS listener on 443.
fn start_demo(dir: &Path) -> Demo {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", &format!("/CN={SERVER_IP}")])
        .args(["-addext", &format!("subjectAltName=IP:{SERVER_IP}")])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut config = DemoConfig::loopback();
    config.listen = SocketAddr::from(([10, 202, 0, 1], 3478));
    config.http = SocketAddr::from(([10, 202, 0, 1], HTTP_PORT));
    config.relay = SERVER_IP.into();
    let toml = format!(
        r#"realm = "demo.test"
[server]
workers = 2
[[listen]]
address = "{SERVER_IP}:3478"
transports = ["udp", "tcp"]
[[listen]]
address = "{SERVER_IP}:443"
transports = ["tls"]
cert = "{cert}"
key = "{key}"
[relay]
address = "{SERVER_IP}"
ports = "40000-40199"
[auth]
secrets = ["{SECRET}"]
users = {{ alice = "{STATIC_PASSWORD}" }}
[peers]
allow = ["10.202.0.0/24"]
[limits]
allocations_per_user = 20
[demo]
address = "{SERVER_IP}:{HTTP_PORT}"
credential_ttl = 600
[log]
level = "info"
"#,
        cert = cert.display(),
        key = key.display()
    );
    Demo::start_toml(&Net::Ns(SRV.into()), config, dir, &toml)
}

/// A page in the LAN whose browser goes through the proxy.
fn page<'a>(driver: &'a Driver, name: &str) -> Session<'a> {
    let proxy = format!("--proxy-server=http://{PROXY}");
    // The test's certificate is self-signed; TURN over TLS checks it too.
    driver.session_with(name, &[&proxy, "--ignore-certificate-errors"])
}

fn open_call(s: &Session, demo: &Demo, params: &str) {
    // The first load through a fresh proxy and browser can take long on a
    // busy machine (Chromium's renderer starts, squid starts its helpers):
    // up to three tries of 30 s.
    let url = demo.url(&format!("/?{params}"));
    let mut errors = Vec::new();
    for _ in 0..3 {
        match s.try_goto(&url) {
            Ok(_) => break,
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(errors.len() < 3, "load {url}: {errors:?}");
    s.wait_until("window.ferroturnCall", Duration::from_secs(20))
        .expect("the call page loads through the proxy");
    s.click("#join");
}

fn squid_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("squid/access.log")).unwrap_or_default()
}

#[test]
fn behind_a_proxy_that_refuses_websocket_the_call_falls_back_to_sockjs_and_turns_on_443() {
    let dir = TempDir::new("corp");
    let started = Instant::now();
    let corp = Corp::create();
    let squid = start_squid(dir.path());
    let demo = start_demo(dir.path());
    let driver = Driver::start_on_free_port(Net::Ns(LAN.into()), dir.path());

    // 1. Without the fallback, the page cannot signal.
    {
        let s = page(&driver, "ws-only");
        open_call(&s, &demo, "room=ws-only&relay=1&signaling=websocket");
        let failed = s.wait_until(
            "ferroturnCall.signaling === 'failed'",
            Duration::from_secs(30),
        );
        assert!(
            failed.is_some(),
            "the WebSocket-only page got in through the proxy: {}",
            s.eval("JSON.stringify(ferroturnCall)")
        );
        let attempts = s.eval("ferroturnCall.attempts");
        assert_eq!(attempts.as_array().map(|a| a.len()), Some(1), "{attempts}");
        assert_eq!(attempts[0]["ok"], false, "{attempts}");
        let log = squid_log(dir.path());
        assert!(
            log.lines().any(|l| l.contains("TCP_DENIED/403")
                && l.contains(&format!("CONNECT {SERVER_IP}:{HTTP_PORT}"))),
            "squid did not refuse the WebSocket's CONNECT:\n{log}"
        );
    }

    // 2. As shipped: the fallback gets in and the call relays over turns:.
    let a = page(&driver, "a");
    let b = page(&driver, "b");
    open_call(&a, &demo, "room=corp&relay=1");
    a.wait_until(
        "ferroturnCall.signaling === 'waiting for peers'",
        Duration::from_secs(40),
    )
    .unwrap_or_else(|| {
        panic!(
            "a did not join: {}",
            a.eval("JSON.stringify(ferroturnCall)")
        )
    });
    open_call(&b, &demo, "room=corp&relay=1");
    let connected =
        |s: &Session| s.eval("ferroturnCall.channelOpen && ferroturnCall.pair !== null") == true;
    let ok = wait_for(Duration::from_secs(60), || {
        (connected(&a) && connected(&b)).then_some(())
    });
    assert!(
        ok.is_some(),
        "the call did not connect behind the proxy:\na: {}\nb: {}\nsquid:\n{}\nferroturn:\n{}",
        a.eval("JSON.stringify(ferroturnCall)"),
        b.eval("JSON.stringify(ferroturnCall)"),
        squid_log(dir.path()),
        demo.log_text()
    );
    for s in [&a, &b] {
        let via = s.eval("ferroturnCall.via");
        assert!(
            via.as_str()
                .is_some_and(|v| v.starts_with("sockjs/") && v != "sockjs/websocket"),
            "signaling did not fall back to a SockJS HTTP transport: {via}"
        );
        let attempts = s.eval("ferroturnCall.attempts");
        assert_eq!(attempts[0]["via"], "websocket", "{attempts}");
        assert_eq!(attempts[0]["ok"], false, "{attempts}");
        // The page's own end of the selected pair is a relay candidate
        // it reached over TLS.
        let pair = s.eval("ferroturnCall.pair");
        assert_eq!(pair["local"]["type"], "relay", "{pair}");
        assert_eq!(pair["local"]["relayProtocol"], "tls", "{pair}");
        assert_eq!(pair["local"]["address"], SERVER_IP, "{pair}");
    }
    // Data flows both ways.
    assert_eq!(a.eval("ferroturnCall.say('from a')"), true);
    assert_eq!(b.eval("ferroturnCall.say('from b')"), true);
    a.wait_until(
        "ferroturnCall.received.includes('from b')",
        Duration::from_secs(10),
    )
    .expect("b's message reaches a");
    b.wait_until(
        "ferroturnCall.received.includes('from a')",
        Duration::from_secs(10),
    )
    .expect("a's message reaches b");

    // ferroturn saw the allocations over TLS only, from the proxy.
    let log = demo.log_text();
    let created: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allocation created"))
        .collect();
    assert!(created.len() >= 2, "{log}");
    for line in &created {
        assert!(
            line.contains("client=10.202.0.2:") && line.contains("/tls"),
            "{line}"
        );
    }
    let (via_a, via_b) = (a.eval("ferroturnCall.via"), b.eval("ferroturnCall.via"));
    drop((a, b));
    // squid logs a tunnel when it closes: the browsers are gone now.
    let tunnelled = |l: &str, port: u16| {
        l.contains("TCP_TUNNEL/200") && l.contains(&format!("CONNECT {SERVER_IP}:{port}"))
    };
    let proxy_log = wait_for(Duration::from_secs(15), || {
        let text = squid_log(dir.path());
        text.lines().any(|l| tunnelled(l, 443)).then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "no CONNECT to 443 in squid's log:\n{}",
            squid_log(dir.path())
        )
    });
    assert!(
        !proxy_log.lines().any(|l| tunnelled(l, 3478)),
        "squid tunnelled TURN on 3478:\n{proxy_log}"
    );
    eprintln!(
        "corporate proxy test: {:?}; a via {via_a}, b via {via_b}",
        started.elapsed()
    );
    drop(driver);
    drop((demo, squid));
    drop(corp);
    for ns in [SRV, GW, LAN] {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
}
