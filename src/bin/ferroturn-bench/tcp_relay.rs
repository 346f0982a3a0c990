//! Relayed throughput of TCP allocations (RFC 6062), ferroturn and coturn
//! alike: a client on a TCP (or TLS) control connection allocates with
//! REQUESTED-TRANSPORT TCP, Connects to a TCP echo peer of the bench,
//! binds a new data connection to it with ConnectionBind (§5.4), then
//! streams bytes through it as fast as they go while reading the echo
//! back. The figure is the rate of bytes that came back, in MB/s: each of
//! them crossed the relay twice, once each way.
//!
//! The client is one tokio thread for every data connection of a trial;
//! the echo peer is a thread per connection. Every loop ends by a
//! deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroturn::proto::stun::{self as wire, Request};
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_NONCE, ATTR_REALM};
use stun::message::{
    CLASS_INDICATION, METHOD_ALLOCATE, METHOD_CONNECT, METHOD_CONNECTION_BIND, Message, Method,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net;
use crate::servers::{Server, Streams, Target};
use crate::turn;

/// The cases, as (metric: MB/s that came back; metric: the server's CPU
/// seconds per GB that came back; data connections, one allocation each;
/// client over TLS).
pub const CASES: [(&str, &str, usize, bool); 3] = [
    ("tcprelay 1", "tcprelay 1 s/GB", 1, false),
    ("tcprelay 4", "tcprelay 4 s/GB", 4, false),
    ("tlsrelay 1", "tlsrelay 1 s/GB", 1, true),
];

/// The metric of the data connections that stalled, over all cases.
pub const STALLS: &str = "tcprelay stalls";

/// Bytes per write of the client and per read of everyone.
const CHUNK: usize = 64 * 1024;
/// Each STUN exchange and connection set-up waits at most this.
const STEP: Duration = Duration::from_secs(5);
/// Streaming before the count starts: TCP's windows open.
const WARM: Duration = Duration::from_millis(300);
/// Bytes a data connection's client sends ahead of what came back, as an
/// application with a window would: nobody's buffers grow without end.
const IN_FLIGHT: u64 = 1 << 20;

/// What every TCP-relay trial of a run shares: the certificate of the TLS
/// listeners and the client's trust in it, and the TCP echo peer.
pub struct Bench {
    cert: PathBuf,
    key: PathBuf,
    client: Arc<rustls::ClientConfig>,
    peer: EchoPeer,
}

impl Bench {
    /// A self-signed certificate for 127.0.0.1 in `dir` (`openssl req`),
    /// and the echo peer.
    pub fn new(dir: &Path) -> Result<Bench, String> {
        let (cert, key) = crate::servers::self_signed(dir, "tcp-relay")?;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let der = CertificateDer::from_pem_file(&cert).map_err(|e| format!("{e}"))?;
        roots.add(der).map_err(|e| format!("{e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Bench {
            cert,
            key,
            client: Arc::new(client),
            peer: EchoPeer::start().map_err(|e| format!("tcp echo peer: {e}"))?,
        })
    }

    /// Every case against `target`, started with TCP and TLS listeners
    /// (and for coturn TCP relaying, which the other tests turn off):
    /// (metric, value) for each case that ran, in [`CASES`] order.
    /// `trial`: how long each case counts.
    pub fn run(
        &self,
        target: &Target,
        paths: &crate::servers::Paths,
        udp_echo: SocketAddrV4,
        trial: Duration,
    ) -> Result<Vec<(&'static str, f64)>, String> {
        let streams = Streams {
            tls_port: net::free_port(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        let server = Server::start_with(target, paths, udp_echo, Some(&streams))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut stalls = 0;
        for (metric, cpu_metric, conns, tls) in CASES {
            let (port, client) = match tls {
                true => (streams.tls_port, Some(&self.client)),
                false => (server.addr.port(), None),
            };
            let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let cpu0 = server.cpu();
            let r = rt.block_on(trial_once(at, client, self.peer.addr, conns, trial));
            let cpu = server.cpu() - cpu0;
            match r {
                Ok(f) => {
                    let per_gb = match f.back {
                        0 => f64::NAN,
                        n => cpu / (n as f64 / 1e9),
                    };
                    eprintln!(
                        "  {metric}: {:.0} MB/s each way ({conns} data connection(s){}), server CPU {:.0} % of a core, {per_gb:.2} s per GB{}",
                        f.rate / 1e6,
                        if tls { ", TLS" } else { "" },
                        cpu / (trial + WARM).as_secs_f64() * 100.0,
                        match f.stalled {
                            0 => String::new(),
                            n => format!(
                                "; {n} connection(s) stalled: nothing came back for the last {STALL:?} with bytes in flight"
                            ),
                        }
                    );
                    got.push((metric, f.rate / 1e6));
                    if per_gb.is_finite() {
                        got.push((cpu_metric, per_gb));
                    }
                    stalls += f.stalled;
                }
                Err(e) => eprintln!("  {metric}: {e}"),
            }
        }
        got.push((STALLS, stalls as f64));
        Ok(got)
    }
}

/// A connection to the server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Conn = Box<dyn Stream>;

async fn open(at: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn, String> {
    let s = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| format!("connect to {at}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(cfg) = tls else {
        return Ok(Box::new(s));
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake with {at}: {e}"))?;
    Ok(Box::new(s))
}

/// One STUN message from `s`; indications are skipped.
async fn answer(s: &mut Conn) -> Result<Message, String> {
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut m = head.to_vec();
        m.resize(20 + len, 0);
        s.read_exact(&mut m[20..])
            .await
            .map_err(|e| e.to_string())?;
        let m = wire::decode(&m).ok_or("not a STUN message")?;
        if m.typ.class != CLASS_INDICATION {
            return Ok(m);
        }
    }
}

/// A client's long-term credentials state on one connection: the realm
/// and nonce of its last 401.
#[derive(Default)]
struct Session {
    realm_nonce: Option<(String, String)>,
}

impl Session {
    /// The success answer to the request `build` makes, signed (a 401
    /// first gives the nonce).
    async fn ask(
        &mut self,
        s: &mut Conn,
        method: Method,
        build: &dyn Fn(Request) -> Request,
    ) -> Result<Message, String> {
        let exchange = async {
            if self.realm_nonce.is_none() {
                s.write_all(&build(Request::new(method)).bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let r = answer(s).await?;
                let realm = wire::text(&r, ATTR_REALM).unwrap_or_else(|| turn::REALM.into());
                let nonce = wire::text(&r, ATTR_NONCE).ok_or("no nonce in the first answer")?;
                self.realm_nonce = Some((realm, nonce));
            }
            // A nonce from another connection may be refused as stale
            // (438, RFC 8489 §9.2.4): once more with the one that came.
            for _ in 0..2 {
                let (realm, nonce) = self.realm_nonce.clone().expect("set");
                let req = build(Request::new(method)).sign(turn::USER, &realm, turn::PASS, &nonce);
                s.write_all(&req).await.map_err(|e| e.to_string())?;
                let r = answer(s).await?;
                match wire::error_code(&r) {
                    None => return Ok(r),
                    Some(438 | 401) if wire::text(&r, ATTR_NONCE).is_some() => {
                        let realm = wire::text(&r, ATTR_REALM).unwrap_or(realm);
                        self.realm_nonce = wire::text(&r, ATTR_NONCE).map(|n| (realm, n));
                    }
                    Some(c) => return Err(format!("refused: {c}")),
                }
            }
            Err("refused twice".to_string())
        };
        match tokio::time::timeout(STEP, exchange).await {
            Ok(r) => r.map_err(|e| format!("{method}: {e}")),
            Err(_) => Err(format!("{method}: no answer in {STEP:?}")),
        }
    }
}

/// A TCP allocation at `at` with a data connection bound to a connection
/// to `peer`: the control connection (its allocation lives as long) and
/// the data connection.
async fn bound_pair(
    at: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer: SocketAddr,
) -> Result<(Conn, Conn), String> {
    let mut control = open(at, tls).await?;
    let mut session = Session::default();
    session
        .ask(&mut control, METHOD_ALLOCATE, &|r| r.transport(6))
        .await?;
    let r = session
        .ask(&mut control, METHOD_CONNECT, &|r| r.peer(peer))
        .await?;
    let id = wire::attr(&r, ATTR_CONNECTION_ID)
        .filter(|v| v.len() == 4)
        .ok_or("Connect answer without CONNECTION-ID")?
        .to_vec();
    // Signed with the control connection's nonce from the start, as
    // coturn's uclient does: coturn closes a data connection whose first
    // ConnectionBind is not signed.
    let mut data = open(at, tls).await?;
    session
        .ask(&mut data, METHOD_CONNECTION_BIND, &|r| {
            r.attr(ATTR_CONNECTION_ID, &id)
        })
        .await?;
    Ok((control, data))
}

/// What one trial measured.
struct Figures {
    /// Bytes per second that came back during the trial.
    rate: f64,
    /// Bytes that came back in all, warm-up included.
    back: u64,
    /// Data connections on which nothing came back in the trial's last
    /// [`STALL`] while bytes were in flight.
    stalled: usize,
}

/// Nothing back for this long at the end of a trial, with bytes in
/// flight: the relay stalled.
const STALL: Duration = Duration::from_millis(500);

/// `conns` bound pairs streaming at once for `WARM` + `trial`.
async fn trial_once(
    at: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer: SocketAddr,
    conns: usize,
    trial: Duration,
) -> Result<Figures, String> {
    let mut pairs = Vec::new();
    for _ in 0..conns {
        pairs.push(bound_pair(at, tls, peer).await?);
    }
    let start = tokio::time::Instant::now();
    let (from, until) = (start + WARM, start + WARM + trial);
    let counted = Arc::new(AtomicU64::new(0));
    let (back_all, stalled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut controls = Vec::new();
    for (control, data) in pairs {
        controls.push(control);
        let (counted, back_all, stalled) = (counted.clone(), back_all.clone(), stalled.clone());
        tasks.spawn(async move {
            let (mut rx, mut tx) = tokio::io::split(data);
            let (chunk, mut buf) = (vec![0x5au8; CHUNK], vec![0u8; CHUNK]);
            let (mut sent, mut back) = (0u64, 0u64);
            let mut last_back = start;
            let ended = loop {
                let ahead = sent - back < IN_FLIGHT;
                tokio::select! {
                    r = rx.read(&mut buf) => match r {
                        Ok(0) => break Some("closed by the server".to_string()),
                        Ok(n) => {
                            back += n as u64;
                            last_back = tokio::time::Instant::now();
                            if last_back >= from {
                                counted.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                        Err(e) => break Some(e.to_string()),
                    },
                    w = tx.write(&chunk), if ahead => match w {
                        Ok(n) => sent += n as u64,
                        Err(e) => break Some(e.to_string()),
                    },
                    _ = tokio::time::sleep_until(until) => break None,
                }
            };
            back_all.fetch_add(back, Ordering::Relaxed);
            if ended.is_none() && sent > back && last_back + STALL < until {
                stalled.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(why) = ended {
                eprintln!(
                    "  a data connection ended {:.2} s into the trial ({why}); {back} bytes came back",
                    start.elapsed().as_secs_f64()
                );
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(controls);
    // A relay that stalled from the start scores 0: that is what it
    // relayed.
    let bytes = counted.load(Ordering::Relaxed);
    Ok(Figures {
        rate: bytes as f64 / trial.as_secs_f64(),
        back: back_all.load(Ordering::Relaxed),
        stalled: stalled.load(Ordering::Relaxed) as usize,
    })
}

/// A TCP peer on 127.0.0.1 that writes back what it reads, a thread per
/// connection; it stops with the bench (or after an hour).
struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoPeer {
    fn start() -> std::io::Result<EchoPeer> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(3600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let stop = stop2.clone();
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let _ = s.set_nodelay(true);
                    let mut buf = vec![0u8; CHUNK];
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        });
        Ok(EchoPeer { addr, stop })
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
