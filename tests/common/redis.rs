//! A `redis-server` for the cluster tests (Debian's redis-server package,
//! which tests/run.sh installs), on a loopback port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use webrtc_util::Conn;

use super::TempDir;

/// The ceiling of every wait for Redis to start.
const CEILING: Duration = Duration::from_secs(10);

/// A `redis-server` on a loopback port, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    /// Options beyond the port and no persistence.
    pub options: Vec<String>,
    /// With TLS only: its (self-signed) certificate.
    pub tls: Option<std::path::PathBuf>,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    pub fn start_with(options: &[&str]) -> Redis {
        let port = super::free_port();
        let dir = TempDir::new("redis");
        let mut r = Redis {
            port,
            options: options.iter().map(|o| o.to_string()).collect(),
            tls: None,
            child: None,
            dir,
        };
        r.restart();
        r
    }

    /// A Redis that speaks TLS only, with a certificate for 127.0.0.1.
    pub fn start_tls() -> Redis {
        let port = super::free_port();
        let dir = TempDir::new("redis-tls");
        let (cert, key) = super::make_cert(dir.path(), "redis");
        let mut r = Redis {
            port,
            options: Vec::new(),
            tls: Some(cert.clone()),
            child: None,
            dir,
        };
        for (option, value) in [
            ("--tls-cert-file", &cert),
            ("--tls-key-file", &key),
            ("--tls-ca-cert-file", &cert),
        ] {
            r.options.push(option.into());
            r.options.push(value.display().to_string());
        }
        r.options
            .extend(["--tls-auth-clients", "no"].map(String::from));
        r.restart();
        r
    }

    /// The URL of this Redis, database 0.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let ports = match self.tls {
            Some(_) => ["--port", "0", "--tls-port", &port],
            None => ["--port", &port, "--bind", "127.0.0.1"],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; tests/run.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + CEILING;
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli -p PORT ARGS…`: its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new("redis-cli");
        if let Some(cert) = &self.tls {
            cli.arg("--tls").arg("--cacert").arg(cert);
        }
        let out = cli
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools package)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls of `command` counted by INFO commandstats since the last reset.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send `n` datagrams through `relay` to the echo `peer`, one at a time;
/// how many came back.
pub async fn echo_round(relay: &(impl Conn + ?Sized), peer: SocketAddr, n: u8) -> usize {
    let mut back = 0;
    for i in 0..n {
        let data = [i; 100];
        if relay.send_to(&data, peer).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await
            && (from, &buf[..len]) == (peer, &data[..])
        {
            back += 1;
        }
    }
    back
}

/// A metric's value from the `/metrics` of a node at `addr`; `None` if
/// the node does not answer or has no such sample.
pub fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    super::sample(&super::scrape(addr).ok()?, name)
}
