//! Static users configured by their long-term key instead of a password
//! (coturn's `0x…` form, RFC 8489 §9.2.2): the key `ferroturn password`
//! prints lets the `turn` crate's client, which knows only the password,
//! authenticate and relay; a wrong password still gets 401.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{EchoPeer, LOCALHOST, REALM, Server, ServerConfig};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::Client;
use webrtc_util::Conn;

const STEP: Duration = Duration::from_secs(10);

/// `ferroturn password --user USER --realm REALM`, the password on stdin.
fn password_key(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(["password", "--user", user, "--realm", REALM])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferroturn password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn client(server: SocketAddr, user: &str, password: &str) -> Client {
    let sock = Arc::new(UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    common::turn_client(server, sock, REALM, user, password).await
}

#[tokio::test]
async fn a_user_given_only_by_its_md5_key_authenticates_and_relays() {
    // echo -n carol:ferroturn.test:tea-party | md5sum
    let key = password_key("carol", "tea-party");
    assert_eq!(key, "0x53ac2bc7f80bf786eb5ffbc2f6ed3f15");
    let server = Server::start_with(ServerConfig {
        users: vec![("carol".into(), key.clone())],
        ..ServerConfig::default()
    });
    let text = std::fs::read_to_string(server.config_path()).unwrap();
    assert!(text.contains(&key) && !text.contains("tea-party"), "{text}");
    let peer = EchoPeer::start();

    let c = client(server.addr, "carol", "tea-party").await;
    let relay = timeout(STEP, c.allocate())
        .await
        .expect("Allocate timed out")
        .expect("Allocate as carol, configured by key");
    assert!(server.is_relay_addr(relay.local_addr().unwrap()));
    for i in 0..5u8 {
        let data = [i; 200];
        timeout(STEP, relay.send_to(&data, peer.addr))
            .await
            .expect("send timed out")
            .expect("send through the relay");
        let mut buf = [0u8; 512];
        let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
            .await
            .expect("no echo through the relay")
            .expect("recv_from");
        assert_eq!((from, &buf[..n]), (peer.addr, &data[..]));
    }
    relay.close().await.unwrap();
    c.close().await.unwrap();

    // The wrong password, and the key used as if it were the password.
    for wrong in ["tea-party!", key.as_str()] {
        let c = client(server.addr, "carol", wrong).await;
        let res = timeout(STEP, c.allocate())
            .await
            .expect("Allocate timed out");
        let e = res.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("401"), "{wrong:?}: expected 401, got {e:?}");
        c.close().await.unwrap();
    }
}
