//! The broker and the session driver over [`super::super::session::pair`]:
//! sessions as channels, frames as text.

use super::*;
use crate::demo::session::{self, QUEUE};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(2);

fn settings() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(200),
        room_size: 3,
        sessions_per_ip: 4,
    }
}

struct Client {
    tx: mpsc::Sender<String>,
    rx: mpsc::Receiver<Outgoing>,
    decoder: Decoder,
    task: JoinHandle<()>,
}

impl Client {
    fn start(broker: &Arc<Broker>, ip: &str) -> Client {
        let (s, tx, rx) = session::pair(ip.parse().unwrap());
        let task = tokio::spawn(serve(broker.clone(), s));
        Client {
            tx,
            rx,
            decoder: Decoder::new(),
            task,
        }
    }

    /// Start and CONNECT with `accept-version: 1.2` and no heart-beats; the
    /// peer id.
    async fn connected(broker: &Arc<Broker>, ip: &str) -> (Client, PeerId) {
        let mut c = Client::start(broker, ip);
        c.send("CONNECT\naccept-version:1.2\nhost:x\n\n\0").await;
        let f = c.frame().await;
        assert_eq!(f.command, "CONNECTED", "{f:?}");
        c.decoder.set_version(Version::V1_2);
        let id = f.header("user-name").unwrap().parse().unwrap();
        (c, id)
    }

    async fn send(&mut self, text: &str) {
        self.tx.send(text.to_owned()).await.unwrap();
    }

    async fn send_frame(&mut self, f: Frame) {
        let text = f.serialize(Version::V1_2);
        self.send(&text).await;
    }

    async fn subscribe(&mut self, id: &str, dest: &str) {
        self.send_frame(
            Frame::new("SUBSCRIBE")
                .with("id", id)
                .with("destination", dest)
                .with("receipt", format!("r-{id}")),
        )
        .await;
        let r = self.frame().await;
        assert_eq!(r.command, "RECEIPT", "{r:?}");
        assert_eq!(r.header("receipt-id"), Some(format!("r-{id}").as_str()));
    }

    /// The next frame, skipping heart-beats.
    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return f.unwrap();
            }
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(Outgoing::Text(t))) => self.decoder.push(&t),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next frame must be an error MESSAGE on /user/queue/errors with
    /// `code`.
    async fn error(&mut self, code: &str) -> String {
        let f = self.frame().await;
        assert_eq!(f.command, "MESSAGE", "{f:?}");
        assert_eq!(f.header("destination"), Some("/user/queue/errors"));
        let v: Value = serde_json::from_str(&f.body).unwrap();
        assert_eq!(v["code"], code, "{v}");
        v["message"].as_str().unwrap().to_owned()
    }

    /// An ERROR, then the close, then the end of the session.
    async fn fault(&mut self) -> (Frame, u16) {
        let f = self.frame().await;
        assert_eq!(f.command, "ERROR", "{f:?}");
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(Outgoing::Close { code, .. })) => (f, code),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    /// Nothing but heart-beats for a while.
    async fn quiet(&mut self) {
        let end = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(m) = tokio::time::timeout_at(end, self.rx.recv()).await {
            assert_eq!(m, Some(Outgoing::Text("\n".into())));
        }
    }
}

fn broker() -> Arc<Broker> {
    Arc::new(Broker::new(settings()))
}

#[tokio::test]
async fn versions_are_negotiated_and_a_stranger_is_refused() {
    let b = broker();
    for (accept, want) in [
        (None, "1.0"),
        (Some("1.0,1.1"), "1.1"),
        (Some("1.1,1.2,1.0"), "1.2"),
    ] {
        let mut c = Client::start(&b, "192.0.2.1");
        let connect = match accept {
            Some(a) => format!("STOMP\naccept-version:{a}\n\n\0"),
            None => "CONNECT\n\n\0".to_owned(),
        };
        c.send(&connect).await;
        let f = c.frame().await;
        assert_eq!(f.command, "CONNECTED");
        assert_eq!(f.header("version"), Some(want));
        assert_eq!(f.header("heart-beat"), Some("200,200"));
    }
    let mut c = Client::start(&b, "192.0.2.1");
    c.send("CONNECT\naccept-version:2.0\n\n\0").await;
    let (f, _) = c.fault().await;
    assert_eq!(f.header("version"), Some("1.0,1.1,1.2"));
}

#[test]
fn heart_beats_take_the_larger_figure_or_none() {
    let offer = Duration::from_millis(10_000);
    let ms = Duration::from_millis;
    assert_eq!(heartbeats(None, offer).unwrap(), (ms(0), ms(0)));
    assert_eq!(heartbeats(Some("0,0"), offer).unwrap(), (ms(0), ms(0)));
    // The client sends every 4 s and wants ours every 20 s.
    assert_eq!(
        heartbeats(Some("4000,20000"), offer).unwrap(),
        (ms(20_000), ms(10_000))
    );
    // It cannot make the server send faster than its offer.
    assert_eq!(
        heartbeats(Some("1,1"), offer).unwrap(),
        (ms(10_000), ms(10_000))
    );
    assert_eq!(
        heartbeats(Some("5000,0"), Duration::ZERO).unwrap(),
        (ms(0), ms(0))
    );
    // Figures beyond an hour count as an hour.
    assert_eq!(
        heartbeats(Some("18446744073709551615,18446744073709551615"), offer).unwrap(),
        (ms(3_600_000), ms(3_600_000))
    );
    assert!(heartbeats(Some("x,1"), offer).is_err());
    assert!(heartbeats(Some("10"), offer).is_err());
}

#[tokio::test]
async fn topics_fan_out_to_every_subscription_with_receipts() {
    let b = broker();
    let (mut a, _) = Client::connected(&b, "192.0.2.1").await;
    let (mut c, _) = Client::connected(&b, "192.0.2.2").await;
    a.subscribe("s1", "/topic/news").await;
    c.subscribe("s9", "/topic/news").await;
    a.send_frame(
        Frame::new("SEND")
            .with("destination", "/topic/news")
            .with("receipt", "42")
            .with_body("text/plain", "hello"),
    )
    .await;
    let mut first = a.frame().await;
    if first.command == "RECEIPT" {
        first = a.frame().await;
    } else {
        assert_eq!(a.frame().await.command, "RECEIPT");
    }
    for (f, sub) in [(first, "s1"), (c.frame().await, "s9")] {
        assert_eq!(f.command, "MESSAGE");
        assert_eq!(f.header("subscription"), Some(sub));
        assert_eq!(f.header("destination"), Some("/topic/news"));
        assert_eq!(f.header("content-type"), Some("text/plain"));
        assert_eq!(f.header("content-length"), Some("5"));
        assert!(f.header("message-id").is_some());
        assert_eq!(f.body, "hello");
    }
    // Unsubscribed: no more.
    c.send_frame(Frame::new("UNSUBSCRIBE").with("id", "s9"))
        .await;
    a.send_frame(Frame::new("SEND").with("destination", "/topic/news"))
        .await;
    assert_eq!(a.frame().await.command, "MESSAGE");
    c.quiet().await;
    // ACK, NACK and transactions do nothing but answer receipts.
    for cmd in ["ACK", "NACK", "BEGIN", "COMMIT", "ABORT"] {
        c.send_frame(
            Frame::new(cmd)
                .with("id", "1")
                .with("transaction", "t")
                .with("receipt", cmd),
        )
        .await;
        assert_eq!(c.frame().await.header("receipt-id"), Some(cmd));
    }
    // DISCONNECT with a receipt: the receipt, then the close.
    c.send_frame(Frame::new("DISCONNECT").with("receipt", "bye"))
        .await;
    assert_eq!(c.frame().await.header("receipt-id"), Some("bye"));
    assert!(matches!(
        c.rx.recv().await,
        Some(Outgoing::Close { code: 1000, .. })
    ));
    tokio::time::timeout(WAIT, c.task).await.unwrap().unwrap();
    assert_eq!(b.sessions(), 1);
}

/// Join, the room's events, a signal to one member only, and errors to
/// the sender alone: another room's member, an unknown destination.
#[tokio::test]
async fn rooms_signal_one_member_and_errors_go_to_the_sender_only() {
    let b = broker();
    let mut peers = Vec::new();
    for i in 1..=3 {
        let (mut c, id) = Client::connected(&b, &format!("192.0.2.{i}")).await;
        for (sub, dest) in [
            ("events", "/topic/room/r1"),
            ("signal", "/user/queue/signal"),
            ("errors", "/user/queue/errors"),
        ] {
            c.subscribe(sub, dest).await;
        }
        peers.push((c, id));
    }
    let ids: Vec<PeerId> = peers.iter().map(|p| p.1).collect();
    for i in 0..3 {
        let (before, rest) = peers.split_at_mut(i);
        let (c, id) = &mut rest[0];
        c.send_frame(Frame::new("SEND").with("destination", "/app/room/r1/join"))
            .await;
        let f = c.frame().await;
        assert_eq!(f.header("destination"), Some("/topic/room/r1"));
        let v: Value = serde_json::from_str(&f.body).unwrap();
        assert_eq!(
            v,
            json!({"type":"joined","room":"r1","id":*id,"peers":ids[..i]})
        );
        for (other, _) in before {
            let f = other.frame().await;
            let v: Value = serde_json::from_str(&f.body).unwrap();
            assert_eq!(v, json!({"type":"peer-joined","from":ids[i]}));
        }
    }
    // A fourth does not fit (rooms of 3): an error to it alone.
    let (mut d, did) = Client::connected(&b, "192.0.2.4").await;
    d.subscribe("errors", "/user/queue/errors").await;
    d.send_frame(Frame::new("SEND").with("destination", "/app/room/r1/join"))
        .await;
    d.error("room-full").await;
    // Peer 0 signals peer 2: only 2 hears it, with `from`.
    let offer = json!({"type":"offer","sdp":"v=0\r\n"}).to_string();
    peers[0]
        .0
        .send_frame(
            Frame::new("SEND")
                .with("destination", "/app/room/r1/signal")
                .with("to", ids[2].to_string())
                .with_body("application/json", offer.clone()),
        )
        .await;
    let f = peers[2].0.frame().await;
    assert_eq!(f.header("destination"), Some("/user/queue/signal"));
    assert_eq!(f.header("subscription"), Some("signal"));
    assert_eq!(f.header("from"), Some(ids[0].to_string().as_str()));
    let v: Value = serde_json::from_str(&f.body).unwrap();
    assert_eq!(
        v,
        json!({"type":"offer","sdp":"v=0\r\n","from":ids[0],"to":ids[2]})
    );
    peers[1].0.quiet().await;
    peers[0].0.quiet().await;
    // d joins another room; a signal from it to r1's member, or to r1,
    // is an error to d only.
    d.send_frame(Frame::new("SEND").with("destination", "/app/room/r2/join"))
        .await;
    for (room, code) in [("r2", "unknown-peer"), ("r1", "not-in-room")] {
        d.send_frame(
            Frame::new("SEND")
                .with("destination", format!("/app/room/{room}/signal"))
                .with("to", ids[0].to_string())
                .with_body("application/json", offer.clone()),
        )
        .await;
        d.error(code).await;
    }
    for (dest, code) in [
        ("/queue/x", "unknown-destination"),
        ("/app/other", "unknown-destination"),
        ("/topic/room/r1", "reserved-destination"),
    ] {
        d.send_frame(Frame::new("SEND").with("destination", dest))
            .await;
        d.error(code).await;
    }
    // A signal without `to`, or with a body that is not one.
    for (to, body, code) in [
        (None, offer.as_str(), "bad-message"),
        (Some("1"), r#"{"type":"join","room":"x"}"#, "bad-message"),
        (Some("1"), "{oops", "bad-json"),
    ] {
        let mut f = Frame::new("SEND").with("destination", "/app/room/r2/signal");
        if let Some(t) = to {
            f = f.with("to", t);
        }
        d.send_frame(f.with_body("application/json", body)).await;
        d.error(code).await;
    }
    for (c, _) in &mut peers {
        c.quiet().await;
    }
    // Leaving: the others hear peer-left.
    drop(peers.pop());
    for (c, _) in &mut peers {
        let v: Value = serde_json::from_str(&c.frame().await.body).unwrap();
        assert_eq!(v, json!({"type":"peer-left","from":ids[2]}));
    }
    let _ = did;
}

#[tokio::test]
async fn protocol_faults_get_an_error_frame_and_a_close() {
    let b = broker();
    let cases: [(&str, &str, u16); 6] = [
        ("SEND\ndestination:/topic/a\n\nx\0", "not connected", 1008),
        ("CONNECT\nheart-beat:x\n\n\0", "malformed frame", 1008),
        ("hello\n\n\0", "malformed frame", 1008),
        ("CONNECT\nno-colon\n\n\0", "malformed frame", 1008),
        ("CONNECT\ncontent-length:70000\n\n", "frame too large", 1009),
        (
            "CONNECT\naccept-version:1.2\n\n\0DANCE\n\n\0",
            "unknown command",
            1008,
        ),
    ];
    for (input, message, code) in cases {
        let mut c = Client::start(&b, "192.0.2.1");
        c.send(input).await;
        let mut f = c.frame().await;
        if f.command == "CONNECTED" {
            c.decoder.set_version(Version::V1_2);
            f = c.frame().await;
        }
        assert_eq!(f.command, "ERROR", "{input:?}");
        assert_eq!(f.header("message"), Some(message), "{input:?}");
        assert!(!f.body.is_empty());
        assert!(
            matches!(c.rx.recv().await, Some(Outgoing::Close { code: c, .. }) if c == code),
            "{input:?}"
        );
        tokio::time::timeout(WAIT, c.task).await.unwrap().unwrap();
    }
    let (mut c, _) = Client::connected(&b, "192.0.2.1").await;
    // SUBSCRIBE without id in 1.2, with a receipt: ERROR names it.
    c.send_frame(
        Frame::new("SUBSCRIBE")
            .with("destination", "/topic/a")
            .with("receipt", "7"),
    )
    .await;
    let (f, _) = c.fault().await;
    assert_eq!(f.header("receipt-id"), Some("7"));
    assert_eq!(b.sessions(), 0);
}

#[tokio::test]
async fn subscriptions_and_sessions_are_bounded() {
    let b = broker();
    let (mut c, _) = Client::connected(&b, "192.0.2.1").await;
    c.subscribe("errors", "/user/queue/errors").await;
    for i in 1..MAX_SUBSCRIPTIONS {
        c.subscribe(&format!("s{i}"), &format!("/topic/t{i}")).await;
    }
    c.send_frame(
        Frame::new("SUBSCRIBE")
            .with("id", "x")
            .with("destination", "/topic/x"),
    )
    .await;
    c.error("too-many-subscriptions").await;
    for bad in ["/queue/a", "/topic/", "/topic/a b", "/user/queue/other"] {
        c.send_frame(
            Frame::new("SUBSCRIBE")
                .with("id", "y")
                .with("destination", bad),
        )
        .await;
        c.error("unknown-destination").await;
    }
    // Sessions per address (4 in these settings), whatever their state.
    let mut held = vec![c];
    for _ in 1..4 {
        held.push(Client::start(&b, "192.0.2.1"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fifth = Client::start(&b, "192.0.2.1");
    let (f, _) = fifth.fault().await;
    assert_eq!(f.header("message"), Some("too many sessions"));
    // Another address is not affected; one place freed is taken again.
    Client::connected(&b, "192.0.2.2").await;
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    Client::connected(&b, "192.0.2.1").await;
}

/// A subscriber that reads nothing: others' messages stop at RESERVED
/// places short of its queue and their sender hears peer-busy; nobody is
/// closed, and the reader's own answers still fit.
#[tokio::test]
async fn a_subscriber_that_does_not_read_loses_messages_not_its_session() {
    let b = broker();
    let (mut slow, _) = Client::connected(&b, "192.0.2.1").await;
    slow.subscribe("s", "/topic/flood").await;
    let (mut fast, _) = Client::connected(&b, "192.0.2.2").await;
    fast.subscribe("errors", "/user/queue/errors").await;
    for _ in 0..QUEUE {
        fast.send_frame(
            Frame::new("SEND")
                .with("destination", "/topic/flood")
                .with_body("text/plain", "x"),
        )
        .await;
    }
    fast.error("peer-busy").await;
    // The slow one now reads: QUEUE - RESERVED messages, then its own
    // receipt.
    slow.send_frame(
        Frame::new("ACK")
            .with("id", "1")
            .with("receipt", "still-here"),
    )
    .await;
    let mut got = 0;
    loop {
        let f = slow.frame().await;
        if f.command == "RECEIPT" {
            break;
        }
        got += 1;
    }
    assert_eq!(got, QUEUE - RESERVED);
    assert_eq!(b.sessions(), 2);
}

#[tokio::test]
async fn heart_beats_go_out_and_a_silent_session_is_closed() {
    let b = broker();
    let mut c = Client::start(&b, "192.0.2.1");
    c.send("CONNECT\naccept-version:1.1\nheart-beat:100,100\n\n\0")
        .await;
    let f = c.frame().await;
    assert_eq!(f.header("heart-beat"), Some("200,200"));
    // Agreed: 200 ms each way. An EOL comes; the client keeps sending
    // its own for 1 s and stays.
    let start = Instant::now();
    let mut beats = 0;
    while start.elapsed() < Duration::from_secs(1) {
        c.send("\n").await;
        if let Ok(Some(Outgoing::Text(t))) =
            tokio::time::timeout(Duration::from_millis(100), c.rx.recv()).await
        {
            assert_eq!(t, "\n");
            beats += 1;
        }
    }
    assert!(beats >= 2, "{beats}");
    // Silent: closed after twice 200 ms.
    let (f, code) = c.fault().await;
    assert_eq!(f.header("message"), Some("heart-beat timeout"));
    assert_eq!(code, 1001);
}

/// Large messages for a subscriber that reads nothing stop at
/// RELAY_BYTES, not at the queue's length.
#[tokio::test]
async fn others_messages_are_bounded_in_bytes_too() {
    let b = broker();
    let (mut slow, _) = Client::connected(&b, "192.0.2.1").await;
    slow.subscribe("s", "/topic/big").await;
    let (mut fast, _) = Client::connected(&b, "192.0.2.2").await;
    fast.subscribe("errors", "/user/queue/errors").await;
    let body = "x".repeat(60_000);
    for _ in 0..4 {
        fast.send_frame(
            Frame::new("SEND")
                .with("destination", "/topic/big")
                .with_body("text/plain", body.clone()),
        )
        .await;
    }
    fast.error("peer-busy").await;
    slow.send_frame(Frame::new("ACK").with("id", "1").with("receipt", "r"))
        .await;
    let mut got = 0;
    while slow.frame().await.command == "MESSAGE" {
        got += 1;
    }
    assert_eq!(got, RELAY_BYTES / 60_100);
}

/// Every session has its own `/user/queue/…` and may follow its room's
/// topic: those are not shared destinations, so more sessions than one
/// shared topic's cap all get their signals.
#[tokio::test]
async fn own_queues_are_not_capped_like_shared_topics() {
    let b = Arc::new(Broker::new(Settings {
        sessions_per_ip: 4096,
        ..settings()
    }));
    let n = MAX_SUBSCRIBERS + 8;
    let mut clients = Vec::new();
    for i in 0..n {
        let (mut c, id) = Client::connected(&b, "192.0.2.7").await;
        c.subscribe("q", "/user/queue/signal").await;
        c.subscribe("e", "/user/queue/errors").await;
        c.subscribe("r", &format!("/topic/room/r{}", i / 2)).await;
        clients.push((c, id));
    }
    // Pair them in rooms of two; the last pair's second member signals the
    // first, past the shared-topic cap.
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.send_frame(Frame::new("SEND").with("destination", format!("/app/room/r{}/join", i / 2)))
            .await;
        let f = c.frame().await;
        assert_eq!(
            f.header("destination"),
            Some(format!("/topic/room/r{}", i / 2).as_str()),
            "{f:?}"
        );
    }
    let first = clients[n - 2].1;
    let (sender, _) = &mut clients[n - 1];
    sender
        .send_frame(
            Frame::new("SEND")
                .with("destination", format!("/app/room/r{}/signal", (n - 1) / 2))
                .with("to", first.to_string())
                .with_body("application/json", r#"{"type":"offer","sdp":"v=0"}"#),
        )
        .await;
    let (receiver, _) = &mut clients[n - 2];
    let f = loop {
        let f = receiver.frame().await;
        if f.header("destination") == Some("/user/queue/signal") {
            break f;
        }
    };
    assert!(f.body.contains("\"offer\""), "{f:?}");
    // The shared topic cap still holds.
    for (k, (c, _)) in clients.iter_mut().enumerate() {
        c.send_frame(
            Frame::new("SUBSCRIBE")
                .with("id", "t")
                .with("destination", "/topic/shared")
                .with("receipt", "rt"),
        )
        .await;
        // Past room news (peer-joined) first.
        let f = loop {
            let f = c.frame().await;
            if !f
                .header("destination")
                .is_some_and(|d| d.starts_with("/topic/room/"))
            {
                break f;
            }
        };
        if k < MAX_SUBSCRIBERS {
            assert_eq!(f.command, "RECEIPT", "{k}: {f:?}");
        } else {
            assert_eq!(f.command, "MESSAGE", "{k}: {f:?}");
            assert!(f.body.contains("topic-full"), "{f:?}");
        }
    }
}

/// One address cannot take the broker's whole table of shared topics:
/// however many sessions it opens (each with its 32 subscriptions), it
/// subscribes to at most MAX_TOPIC_SUBSCRIPTIONS_PER_SITE topics, and
/// another address can still open a new one. Before, one address took
/// all 1024 and everyone else got `too-many-topics`.
#[tokio::test]
async fn one_address_cannot_take_every_shared_topic() {
    let b = Arc::new(Broker::new(Settings {
        sessions_per_ip: 64,
        ..settings()
    }));
    let mut held = Vec::new();
    let mut taken = 0;
    'sessions: for s in 0..MAX_TOPICS.div_ceil(MAX_SUBSCRIPTIONS - 1) + 1 {
        let (mut c, _) = Client::connected(&b, "192.0.2.1").await;
        c.subscribe("errors", "/user/queue/errors").await;
        for i in 1..MAX_SUBSCRIPTIONS {
            c.send_frame(
                Frame::new("SUBSCRIBE")
                    .with("id", format!("s{i}"))
                    .with("destination", format!("/topic/squat-{s}-{i}"))
                    .with("receipt", "r"),
            )
            .await;
            let f = c.frame().await;
            if f.command != "RECEIPT" {
                assert!(f.body.contains("too-many-topics"), "{f:?}");
                held.push(c);
                break 'sessions;
            }
            taken += 1;
        }
        held.push(c);
    }
    assert!(taken < MAX_TOPICS, "one address took {taken} topics");
    let (mut other, _) = Client::connected(&b, "192.0.2.2").await;
    other.subscribe("fresh", "/topic/fresh").await;
    // What the address gives back it may take again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut again, _) = Client::connected(&b, "192.0.2.1").await;
    again.subscribe("t", "/topic/again").await;
}
