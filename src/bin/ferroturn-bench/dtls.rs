//! TURN over DTLS, ferroturn beside coturn (`--tests dtls`): DTLS 1.2
//! handshakes per second (8 in flight, each closed with close_notify), and
//! relayed round trips per second over one DTLS session (an allocation
//! channel-bound to the echo peer, 32 ChannelData of 200 B in flight), each
//! with the server CPU it costs. The client is OpenSSL, on one thread of
//! the bench; both servers get the same P-256 certificate.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferroturn::proto::stun::{Request, decode, error_code, text};
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode, SslVersion};
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::message::{CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

use crate::servers::{self, Build, Paths};
use crate::turn;

/// Handshakes in flight.
const HANDSHAKES_IN_FLIGHT: usize = 8;
/// ChannelData in flight over the one session.
const WINDOW: usize = 32;
const PAYLOAD: usize = 200;
const CHANNEL: u16 = 0x4000;

/// One server's figures from one repetition.
#[derive(Clone, Copy, Default)]
struct Figures {
    handshakes: f64,
    handshake_cpu_us: f64,
    round_trips: f64,
    round_trip_cpu_us: f64,
}

/// OpenSSL's datagrams, in and out, handed over by hand.
#[derive(Default)]
struct Datagrams {
    inbound: VecDeque<Vec<u8>>,
    outbound: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.inbound.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A DTLS client on a non-blocking socket of its own.
struct Client {
    sock: UdpSocket,
    tls: SslStream<Datagrams>,
    started: Instant,
}

impl Client {
    fn new(ctx: &SslContext, server: SocketAddrV4) -> io::Result<Client> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.connect(server)?;
        sock.set_nonblocking(true)?;
        let mut ssl = Ssl::new(ctx).map_err(io::Error::other)?;
        ssl.set_connect_state();
        ssl.set_mtu(1200).map_err(io::Error::other)?;
        let tls = SslStream::new(ssl, Datagrams::default()).map_err(io::Error::other)?;
        Ok(Client {
            sock,
            tls,
            started: Instant::now(),
        })
    }

    fn flush(&mut self) {
        for d in self.tls.get_mut().outbound.drain(..) {
            let _ = self.sock.send(&d);
        }
    }

    /// Take what the socket holds; whether anything came.
    fn receive(&mut self, buf: &mut [u8]) -> bool {
        let mut any = false;
        while let Ok(n) = self.sock.recv(buf) {
            self.tls.get_mut().inbound.push_back(buf[..n].to_vec());
            any = true;
        }
        any
    }

    /// A handshake step: `Some(true)` when done, `None` when it failed.
    fn step(&mut self) -> Option<bool> {
        let r = match self.tls.do_handshake() {
            Ok(()) => Some(true),
            Err(e) if e.code() == ErrorCode::WANT_READ => Some(false),
            Err(_) => None,
        };
        self.flush();
        r
    }
}

fn client_context() -> SslContext {
    let mut b = SslContext::builder(SslMethod::dtls_client()).expect("DTLS client context");
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .expect("DTLS 1.2");
    b.build()
}

/// Wait until one of `socks` is readable or `max` passed.
fn wait_readable(socks: &[&UdpSocket], max: Duration) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfd for the call.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            max.as_millis() as i32,
        );
    }
}

/// Handshakes with [`HANDSHAKES_IN_FLIGHT`] in flight for `each`: how many
/// finished, and the seconds it took.
fn handshakes(ctx: &SslContext, server: SocketAddrV4, each: Duration) -> (usize, f64) {
    let mut live: Vec<Client> = Vec::new();
    let mut done = 0;
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    while start.elapsed() < each {
        while live.len() < HANDSHAKES_IN_FLIGHT {
            let Ok(mut c) = Client::new(ctx, server) else {
                break;
            };
            if c.step().is_some() {
                live.push(c);
            }
        }
        let socks: Vec<&UdpSocket> = live.iter().map(|c| &c.sock).collect();
        wait_readable(&socks, Duration::from_millis(20));
        let mut i = 0;
        while i < live.len() {
            let c = &mut live[i];
            let stalled = c.started.elapsed() > Duration::from_secs(2);
            let r = if c.receive(&mut buf) {
                c.step()
            } else if stalled {
                None
            } else {
                Some(false)
            };
            match r {
                Some(false) => i += 1,
                Some(true) => {
                    done += 1;
                    // close_notify: the server drops the session now.
                    let _ = c.tls.shutdown();
                    c.flush();
                    live.swap_remove(i);
                }
                None => {
                    live.swap_remove(i);
                }
            }
        }
    }
    (done, start.elapsed().as_secs_f64())
}

/// One established session with an allocation channel-bound to `echo`.
fn relay_session(
    ctx: &SslContext,
    server: SocketAddrV4,
    echo: SocketAddrV4,
) -> Result<Client, String> {
    let mut c = Client::new(ctx, server).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.step() {
            Some(true) => break,
            Some(false) => {}
            None => return Err("DTLS handshake failed".into()),
        }
        if Instant::now() > deadline {
            return Err("no DTLS handshake within 5 s".into());
        }
        wait_readable(&[&c.sock], Duration::from_millis(200));
        c.receive(&mut buf);
    }
    let mut ask = |c: &mut Client, req: Vec<u8>| -> Result<stun::message::Message, String> {
        c.tls.ssl_write(&req).map_err(|e| e.to_string())?;
        c.flush();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            wait_readable(&[&c.sock], Duration::from_millis(100));
            c.receive(&mut buf);
            if let Ok(n) = c.tls.ssl_read(&mut buf)
                && let Some(m) = decode(&buf[..n])
                && m.transaction_id.0 == req[8..20]
            {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err("no answer over DTLS within 3 s".into());
            }
        }
    };
    let challenge = ask(&mut c, Request::new(METHOD_ALLOCATE).transport(17).bytes())?;
    let nonce = text(&challenge, ATTR_NONCE).unwrap_or_default();
    let realm = text(&challenge, ATTR_REALM).unwrap_or_else(|| turn::REALM.into());
    let signed = |r: Request| r.sign(turn::USER, &realm, turn::PASS, &nonce);
    for req in [
        signed(Request::new(METHOD_ALLOCATE).transport(17)),
        signed(
            Request::new(METHOD_CHANNEL_BIND)
                .channel(CHANNEL)
                .peer(SocketAddr::V4(echo)),
        ),
    ] {
        let m = ask(&mut c, req)?;
        if m.typ.class != CLASS_SUCCESS_RESPONSE {
            return Err(format!("refused over DTLS: {:?}", error_code(&m)));
        }
    }
    Ok(c)
}

/// ChannelData round trips with [`WINDOW`] in flight for `each`: how
/// many came back, and the seconds it took.
fn round_trips(c: &mut Client, each: Duration) -> (usize, f64) {
    let mut frame = vec![0u8; 4 + PAYLOAD];
    frame[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    frame[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    let mut buf = vec![0u8; 65_536];
    let mut back = 0;
    let mut in_flight = 0;
    let mut quiet_since = Instant::now();
    let start = Instant::now();
    while start.elapsed() < each {
        while in_flight < WINDOW {
            if c.tls.ssl_write(&frame).is_err() {
                break;
            }
            in_flight += 1;
        }
        c.flush();
        wait_readable(&[&c.sock], Duration::from_millis(20));
        c.receive(&mut buf);
        let mut got = 0;
        while let Ok(n) = c.tls.ssl_read(&mut buf) {
            if n >= 4 && buf[..2] == CHANNEL.to_be_bytes() {
                got += 1;
            }
        }
        back += got;
        in_flight -= got.min(in_flight);
        if got > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(200) {
            // Lost on the way: refill the window.
            in_flight = 0;
            quiet_since = Instant::now();
        }
    }
    (back, start.elapsed().as_secs_f64())
}

/// A server with DTLS on a port of its own: the process, its UDP address
/// (for readiness) and its DTLS address.
fn start(
    build: Option<&Build>,
    paths: &Paths,
    cert: &Path,
    key: &Path,
) -> Result<(Child, SocketAddrV4), String> {
    let port = crate::net::free_port();
    let dtls_port = crate::net::free_port();
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let dtls = SocketAddrV4::new(Ipv4Addr::LOCALHOST, dtls_port);
    let mut cmd = match build {
        Some(b) => {
            // The bench's config, lifted limits, per-IP caps off (every
            // client is 127.0.0.1), and the DTLS listener.
            let mut text = servers::ferroturn_config(
                port,
                paths.ferroturn_workers,
                "",
                true,
                None,
                &servers::Place::loopback(),
            );
            text.push_str("connections_per_ip = 0\n");
            text.push_str(&format!(
                "[[listen]]\naddress = \"{dtls}\"\ntransports = [\"dtls\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
            let file = paths.dir.join(format!("{}-dtls.toml", b.name));
            std::fs::write(&file, text).map_err(|e| e.to_string())?;
            let mut c = Command::new(&b.path);
            c.arg("--config").arg(&file);
            c
        }
        None => {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut c = Command::new(&paths.turnserver);
            c.args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
            ]);
            c.args(["--listening-port", &port.to_string()]);
            c.args(["--tls-listening-port", &dtls_port.to_string()]);
            c.args(["--min-port", &servers::COTURN_PORTS.0.to_string()]);
            c.args(["--max-port", &servers::COTURN_PORTS.1.to_string()]);
            c.args(["--relay-threads", &threads.to_string()]);
            c.args(["--lt-cred-mech", "--realm", turn::REALM]);
            c.args(["--user", &format!("{}:{}", turn::USER, turn::PASS)]);
            c.args(["--allow-loopback-peers", "--no-cli", "--no-rfc5780"]);
            // DTLS on: only TCP, TLS and TCP relays off.
            c.args(["--no-tcp", "--no-tls", "--no-tcp-relay"]);
            c.arg("--cert").arg(cert).arg("--pkey").arg(key);
            c.args([
                "--no-software-attribute",
                "--log-file",
                "stdout",
                "--simple-log",
            ]);
            c.arg("--pidfile")
                .arg(paths.dir.join("turnserver-dtls.pid"));
            c
        }
    };
    let mut child = servers::spawn_quiet(&mut cmd).map_err(|e| e.to_string())?;
    if !turn::wait_ready(addr, Duration::from_secs(10)) {
        servers::stop(&mut child);
        return Err(format!("no answer on {addr}"));
    }
    Ok((child, dtls))
}

/// Both measures against one server.
fn measure(
    build: Option<&Build>,
    paths: &Paths,
    cert: (&Path, &Path),
    echo: SocketAddrV4,
    each: Duration,
) -> Result<Figures, String> {
    let (mut child, dtls) = start(build, paths, cert.0, cert.1)?;
    let pid = child.id();
    let ctx = client_context();
    let result = (|| {
        let c0 = servers::cpu_secs(pid);
        let (n, secs) = handshakes(&ctx, dtls, each);
        let hs_cpu = servers::cpu_secs(pid) - c0;
        if n == 0 {
            return Err("no DTLS handshake".to_string());
        }
        let mut session = relay_session(&ctx, dtls, echo)?;
        let c0 = servers::cpu_secs(pid);
        let (back, rt_secs) = round_trips(&mut session, each);
        let rt_cpu = servers::cpu_secs(pid) - c0;
        Ok(Figures {
            handshakes: n as f64 / secs,
            handshake_cpu_us: hs_cpu / n as f64 * 1e6,
            round_trips: back as f64 / rt_secs,
            round_trip_cpu_us: rt_cpu / back.max(1) as f64 * 1e6,
        })
    })();
    servers::stop(&mut child);
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Run `reps` repetitions, coturn then each build in turn, `each` per
/// measure; the markdown table of medians.
pub fn run(
    builds: &[Build],
    paths: &Paths,
    coturn: bool,
    echo: SocketAddrV4,
    reps: usize,
    each: Duration,
) -> String {
    let cert = match servers::self_signed(&paths.dir, "dtls") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  dtls: no certificate: {e}");
            return String::new();
        }
    };
    let mut columns: Vec<(String, Option<&Build>)> = Vec::new();
    if coturn {
        columns.push(("coturn".into(), None));
    }
    columns.extend(builds.iter().map(|b| (b.name.clone(), Some(b))));
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); columns.len()];
    for rep in 0..reps {
        for (i, (name, build)) in columns.iter().enumerate() {
            eprintln!("[dtls rep {}] {name}", rep + 1);
            match measure(*build, paths, (&cert.0, &cert.1), echo, each) {
                Ok(f) => {
                    eprintln!(
                        "  {:.0} handshakes/s ({:.0} µs server CPU each), {:.0} round trips/s ({:.1} µs server CPU each)",
                        f.handshakes, f.handshake_cpu_us, f.round_trips, f.round_trip_cpu_us
                    );
                    figures[i].push(f);
                }
                Err(e) => eprintln!("  {name}: {e}"),
            }
        }
    }
    let mut out = String::from(
        "\n### TURN over DTLS\n\n| server | DTLS handshakes/s | server CPU per handshake (µs) | relayed round trips/s over one session | server CPU per round trip (µs) |\n|---|---|---|---|---|\n",
    );
    let med = |f: &[Figures], pick: fn(&Figures) -> f64| median(f.iter().map(pick).collect());
    let mut coturn_figures = None;
    for ((name, _), f) in columns.iter().zip(&figures) {
        if f.is_empty() {
            continue;
        }
        let row = [
            med(f, |x| x.handshakes),
            med(f, |x| x.handshake_cpu_us),
            med(f, |x| x.round_trips),
            med(f, |x| x.round_trip_cpu_us),
        ];
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.1} |",
            row[0], row[1], row[2], row[3]
        );
        if name == "coturn" {
            coturn_figures = Some(row);
        } else if let Some(c) = coturn_figures {
            let _ = writeln!(
                out,
                "| {name} / coturn | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                row[0] / c[0],
                row[1] / c[1],
                row[2] / c[2],
                row[3] / c[3]
            );
        }
    }
    out
}
