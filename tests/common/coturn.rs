//! coturn's client tools for tests: `turnutils_peer` as an echo peer, and
//! the final summary of `turnutils_uclient`.

use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{KillOnDrop, LOCALHOST};

/// A command for one of coturn's tools, with no standard input.
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.stdin(Stdio::null());
    c
}

/// The number right after `key` in `text` (digits only).
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// `turnutils_peer` on 127.0.0.1:PORT (it also takes PORT+1 for RTCP),
/// answering by the time this returns.
pub struct CoturnPeer {
    pub port: u16,
    _child: KillOnDrop,
}

impl CoturnPeer {
    pub fn start() -> CoturnPeer {
        Self::start_on(IpAddr::V4(LOCALHOST))
    }

    /// A peer on `ip` (127.0.0.1 or ::1).
    pub fn start_on(ip: IpAddr) -> CoturnPeer {
        for _ in 0..20 {
            let port = super::free_udp_port();
            if port == u16::MAX
                || UdpSocket::bind((ip, port)).is_err()
                || UdpSocket::bind((ip, port + 1)).is_err()
            {
                continue;
            }
            let child = tool("turnutils_peer")
                .args(["-p", &port.to_string(), "-L", &ip.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnutils_peer (is the coturn package installed? tests/run.sh installs it)");
            let mut child = KillOnDrop(child);
            // It echoes whatever it gets; wait (bounded) until it does.
            let probe = UdpSocket::bind((ip, 0)).unwrap();
            probe
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 64];
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.0.try_wait() {
                    break; // port taken meanwhile: try another
                }
                let _ = probe.send_to(b"ping", (ip, port));
                if let Ok((n, _)) = probe.recv_from(&mut buf)
                    && &buf[..n] == b"ping"
                {
                    return CoturnPeer {
                        port,
                        _child: child,
                    };
                }
            }
        }
        panic!("turnutils_peer did not come up");
    }
}

/// The figures of uclient's final summary, e.g.
///
/// ```text
/// 6: : start_mclient: tot_send_msgs=100, tot_recv_msgs=100
/// 6: : start_mclient: tot_send_bytes ~ 17000, tot_recv_bytes ~ 17000
/// 6: : Total transmit time is 6
/// 6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
/// ```
#[derive(Debug)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub lost: u64,
    pub send_dropped: u64,
}

impl Summary {
    /// Everything sent came back: at least `min_sent` messages, as many
    /// (and as many bytes) received, none lost or dropped. `context` goes
    /// into every failure message.
    pub fn assert_complete(&self, min_sent: u64, context: &str) {
        assert!(self.sent >= min_sent, "too few sent: {self:?}\n{context}");
        assert!(self.received > 0, "nothing received: {self:?}\n{context}");
        assert_eq!(self.received, self.sent, "{self:?}\n{context}");
        assert_eq!(self.received_bytes, self.sent_bytes, "{self:?}\n{context}");
        assert_eq!(self.lost, 0, "lost packets: {self:?}\n{context}");
        assert_eq!(self.send_dropped, 0, "send dropped: {self:?}\n{context}");
    }
}

pub fn parse_summary(output: &str) -> Option<Summary> {
    // The final totals are the start_mclient lines without "msz=" (the
    // lines with it are progress reports).
    let totals = output
        .lines()
        .rfind(|l| l.contains("start_mclient: tot_send_msgs=") && !l.contains("msz="))?;
    let bytes = output
        .lines()
        .rfind(|l| l.contains("start_mclient: tot_send_bytes") && !l.contains("msz="))?;
    let lost = output.lines().rfind(|l| l.contains("Total lost packets"))?;
    Some(Summary {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        sent_bytes: number_after(bytes, "tot_send_bytes ~")?,
        received_bytes: number_after(bytes, "tot_recv_bytes ~")?,
        lost: number_after(lost, "Total lost packets")?,
        send_dropped: number_after(lost, "total send dropped")?,
    })
}
