//! The endpoint's sessions: the caps on them ([`Registry`], [`Seat`]), the
//! sessions of the HTTP transports that outlive each request
//! ([`HttpSession`]), with the task that feeds each from its protocol and
//! ends it, and the body of a receiving request ([`ReceiverBody`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use hyper::body::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::frame::{self, Wrap};
use super::{Handler, INBOX_BYTES, INBOX_WAIT, OUTBOX_BYTES, RECEIVER_LIFETIME, Settings, close};
use crate::demo::session::{self, Outgoing};
use crate::http::{Peer, Site};

/// What a queued message costs beyond its text, so that a flood of tiny
/// messages is bounded too.
const MESSAGE_OVERHEAD: usize = 16;

/// The sessions of one endpoint: the HTTP ones by id, and the seat of
/// every session (WebSockets too), counted per peer.
pub struct Registry {
    table: Mutex<Table>,
    per_peer: usize,
    max: usize,
    disconnect_delay: Duration,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<HttpSession>>,
    /// Every seat held, by number: in the order they were taken.
    seats: BTreeMap<u64, Held>,
    per_peer: HashMap<Peer, usize>,
    next: u64,
}

struct Held {
    peer: Peer,
    /// Woken to end the session: its seat went to a newcomer.
    evict: Arc<Notify>,
}

impl Table {
    fn release(&mut self, number: u64) {
        let Some(held) = self.seats.remove(&number) else {
            return;
        };
        if let Some(n) = self.per_peer.get_mut(&held.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&held.peer);
            }
        }
    }

    /// When the endpoint is full, the oldest seat of the site holding the
    /// most, if that site holds more than `newcomer`'s would with it:
    /// a few addresses (or the /64s of one IPv6 /48) cannot hold every
    /// seat and lock others out.
    fn to_evict(&self, newcomer: Peer) -> Option<u64> {
        let mut by_site: HashMap<Site, usize> = HashMap::new();
        for h in self.seats.values() {
            *by_site.entry(Site::of(h.peer)).or_default() += 1;
        }
        let (heaviest, most) = by_site.iter().max_by_key(|&(_, n)| *n)?;
        let mine = by_site.get(&Site::of(newcomer)).copied().unwrap_or(0);
        if *most <= mine + 1 {
            return None;
        }
        self.seats
            .iter()
            .find(|(_, h)| Site::of(h.peer) == *heaviest)
            .map(|(&n, _)| n)
    }
}

/// A session's place under the caps, given back when dropped.
pub struct Seat {
    registry: Arc<Registry>,
    number: u64,
    /// Woken when the seat was given to a newcomer: end the session.
    pub evicted: Arc<Notify>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.registry.lock().release(self.number);
    }
}

/// Why no session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the caps.
    Full,
    /// The id belongs to a session of another address.
    Foreign,
}

pub enum Opened {
    Session(Arc<HttpSession>),
    Refused(Refused),
}

impl Registry {
    pub fn new(settings: &Settings) -> Arc<Registry> {
        Arc::new(Registry {
            table: Mutex::new(Table::default()),
            per_peer: settings.sessions_per_ip,
            max: settings.max_sessions,
            disconnect_delay: settings.disconnect_delay,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new session of `peer`, if the caps leave one.
    pub fn seat(self: &Arc<Self>, peer: Peer) -> Option<Seat> {
        let mut t = self.lock();
        Self::take_seat(self, &mut t, peer)
    }

    fn take_seat(this: &Arc<Self>, t: &mut Table, peer: Peer) -> Option<Seat> {
        if t.per_peer.get(&peer).copied().unwrap_or(0) >= this.per_peer {
            return None;
        }
        if t.seats.len() >= this.max {
            let number = t.to_evict(peer)?;
            if let Some(h) = t.seats.get(&number) {
                tracing::debug!(peer = ?h.peer, "sockjs: the endpoint is full, closing a session of the busiest site");
                h.evict.notify_one();
            }
            t.release(number);
        }
        t.next += 1;
        let number = t.next;
        let evicted = Arc::new(Notify::new());
        t.seats.insert(
            number,
            Held {
                peer,
                evict: evicted.clone(),
            },
        );
        *t.per_peer.entry(peer).or_default() += 1;
        Some(Seat {
            registry: this.clone(),
            number,
            evicted,
        })
    }

    /// The HTTP session `id` of `peer`, if there is one.
    pub fn find(&self, id: &str, peer: Peer) -> Option<Arc<HttpSession>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|s| s.peer == peer)
            .cloned()
    }

    /// The HTTP session `id`, opened for `peer` (at `ip`) with a new task
    /// of `handler` if there is none.
    pub fn open(self: &Arc<Self>, id: &str, peer: Peer, ip: IpAddr, handler: &Handler) -> Opened {
        let mut t = self.lock();
        if let Some(s) = t.by_id.get(id) {
            return if s.peer == peer {
                Opened::Session(s.clone())
            } else {
                Opened::Refused(Refused::Foreign)
            };
        }
        let Some(seat) = Self::take_seat(self, &mut t, peer) else {
            tracing::debug!(?peer, "sockjs: session refused, over the caps");
            return Opened::Refused(Refused::Full);
        };
        let (protocol, in_tx, out_rx) = session::pair(ip);
        let s = Arc::new(HttpSession {
            id: id.to_owned(),
            peer,
            state: Mutex::new(State {
                opened: false,
                queue: VecDeque::new(),
                queued: 0,
                closed: None,
                since: Instant::now(),
                receiver: None,
                next_receiver: 0,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            inbox: tokio::sync::Mutex::new(Inbox::new(in_tx)),
        });
        t.by_id.insert(id.to_owned(), s.clone());
        drop(t);
        tokio::spawn(handler(protocol));
        tokio::spawn(run(s.clone(), self.clone(), out_rx, seat));
        Opened::Session(s)
    }

    /// Forget `s` (not a newer session of the same id).
    fn remove(&self, s: &Arc<HttpSession>) {
        let mut t = self.lock();
        if t.by_id.get(&s.id).is_some_and(|held| Arc::ptr_eq(held, s)) {
            t.by_id.remove(&s.id);
        }
    }

    /// Sessions held now, in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().seats.len()
    }
}

/// A session of the HTTP transports: its messages wait here between
/// receiving requests.
pub struct HttpSession {
    id: String,
    peer: Peer,
    state: Mutex<State>,
    /// Woken when there is something for the receiver.
    wake: Notify,
    /// Woken when the session closed, for its task.
    changed: Notify,
    /// The protocol's incoming messages; held across an `xhr_send`, so
    /// that the messages of one request stay together.
    inbox: tokio::sync::Mutex<Inbox>,
}

struct State {
    /// Whether the open frame went out.
    opened: bool,
    /// Messages for the client, and their cost.
    queue: VecDeque<String>,
    queued: usize,
    closed: Option<(u16, String)>,
    /// When it closed, or when its last receiver left.
    since: Instant,
    /// The receiving request attached, by its number.
    receiver: Option<u64>,
    next_receiver: u64,
}

/// What a receiving request found.
pub enum Attach {
    /// The session is closed: this is its close frame.
    Closed(String),
    /// Another receiver is attached.
    Busy,
    Receiver(Receiver),
}

/// A receiving request's hold on its session, let go when dropped.
pub struct Receiver {
    session: Arc<HttpSession>,
    number: u64,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut st = self.session.lock();
        if st.receiver == Some(self.number) {
            st.receiver = None;
            if st.closed.is_none() {
                st.since = Instant::now();
            }
        }
    }
}

impl HttpSession {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attach a receiving request, unless one is attached or the session
    /// is closed.
    pub fn attach(self: &Arc<Self>) -> Attach {
        let mut st = self.lock();
        if let Some((code, reason)) = &st.closed {
            return Attach::Closed(frame::close(*code, reason));
        }
        if st.receiver.is_some() {
            return Attach::Busy;
        }
        st.next_receiver += 1;
        let number = st.next_receiver;
        st.receiver = Some(number);
        Attach::Receiver(Receiver {
            session: self.clone(),
            number,
        })
    }

    /// Close the session with `(code, reason)` unless it is closed: what
    /// was queued still goes out before the close frame.
    pub fn close(&self, (code, reason): (u16, &str)) {
        self.close_owned(code, reason.to_owned());
    }

    fn close_owned(&self, code: u16, reason: String) {
        {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some((code, reason));
            st.since = Instant::now();
        }
        self.wake.notify_waiters();
        self.changed.notify_one();
    }

    /// Queue a message of the protocol; past [`OUTBOX_BYTES`] the session
    /// is closed and its queue dropped. A message counts as many bytes as
    /// it may take on the wire ([`frame::wire_len`]), so the bound holds
    /// for the frame a receiver writes; one message alone always fits.
    fn queue(&self, text: String) {
        {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.queued += frame::wire_len(&text) + MESSAGE_OVERHEAD;
            st.queue.push_back(text);
            if st.queued > OUTBOX_BYTES && st.queue.len() > 1 {
                tracing::debug!(session = %self.id, "sockjs: client does not read its messages, closing");
                st.queue.clear();
                st.queued = 0;
                drop(st);
                self.close(close::SLOW_READER);
                return;
            }
        }
        self.wake.notify_waiters();
    }

    /// The next frame for receiver `number`, and whether it is the last
    /// (a close frame, after which the receiver is let go).
    fn next_frame(&self, number: u64) -> Option<(String, bool)> {
        let mut st = self.lock();
        if !st.opened {
            st.opened = true;
            return Some((frame::OPEN.into(), false));
        }
        if !st.queue.is_empty() {
            let f = frame::messages(st.queue.iter().map(String::as_str));
            st.queue.clear();
            st.queued = 0;
            return Some((f, false));
        }
        if let Some((code, reason)) = &st.closed {
            let f = frame::close(*code, reason);
            if st.receiver == Some(number) {
                st.receiver = None;
            }
            return Some((f, true));
        }
        None
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Whether the session is due to end: closed for `delay`, or without
    /// a receiver for `delay`.
    fn expired(&self, delay: Duration) -> bool {
        let st = self.lock();
        (st.closed.is_some() || st.receiver.is_none()) && st.since.elapsed() >= delay
    }

    /// Pass the client's `messages` to the protocol, in order.
    pub async fn deliver(&self, messages: Vec<String>) -> Result<(), InboxError> {
        let mut inbox = self.inbox.lock().await;
        if self.is_closed() {
            return Err(InboxError::Closed);
        }
        inbox.push_all(messages).await
    }
}

/// Feed `s` from its protocol and end it: after the disconnect delay
/// with no receiver, or the delay after it closed.
async fn run(
    s: Arc<HttpSession>,
    registry: Arc<Registry>,
    mut out_rx: mpsc::Receiver<Outgoing>,
    seat: Seat,
) {
    let delay = registry.disconnect_delay;
    let mut tick = tokio::time::interval((delay / 4).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut protocol = true;
    loop {
        tokio::select! {
            out = out_rx.recv(), if protocol => match out {
                Some(Outgoing::Text(t)) => s.queue(t),
                Some(Outgoing::Close { code, reason }) => s.close_owned(code, reason),
                None => s.close(close::GO_AWAY),
            },
            _ = s.changed.notified() => {}
            _ = seat.evicted.notified() => s.close(close::TOO_MANY),
            _ = tick.tick() => {}
        }
        if protocol && s.is_closed() {
            // The protocol hears the end: its incoming ends, its sends fail.
            protocol = false;
            out_rx.close();
            s.inbox.lock().await.tx = None;
        }
        if s.expired(delay) {
            break;
        }
    }
    if protocol {
        tracing::debug!(session = %s.id, "sockjs: no receiving request for the disconnect delay, closing");
        s.close(close::GO_AWAY);
        s.inbox.lock().await.tx = None;
    }
    registry.remove(&s);
    drop(seat);
}

/// Why the client's messages were not all passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxError {
    /// The protocol is gone.
    Closed,
    /// The protocol had no room for [`INBOX_WAIT`].
    TooFast,
}

/// The sending end of a protocol's incoming messages, bounded in bytes:
/// the protocol's channel holds [`session::QUEUE`] messages, and this
/// keeps what they add up to within [`INBOX_BYTES`] (one message always
/// fits an empty channel).
pub struct Inbox {
    tx: Option<mpsc::Sender<String>>,
    /// The sizes of the messages sent and maybe not read yet, oldest
    /// first: the channel is first in, first out, so the ones read are
    /// at the front.
    sizes: VecDeque<usize>,
}

impl Inbox {
    pub fn new(tx: mpsc::Sender<String>) -> Inbox {
        Inbox {
            tx: Some(tx),
            sizes: VecDeque::new(),
        }
    }

    /// Bytes sent and not read yet.
    fn unread(&mut self, tx: &mpsc::Sender<String>) -> (usize, usize) {
        let waiting = tx.max_capacity() - tx.capacity();
        while self.sizes.len() > waiting {
            self.sizes.pop_front();
        }
        (waiting, self.sizes.iter().sum())
    }

    pub async fn push_all(&mut self, messages: Vec<String>) -> Result<(), InboxError> {
        for m in messages {
            self.push(m).await?;
        }
        Ok(())
    }

    /// Send `msg`, waiting up to [`INBOX_WAIT`] for room.
    pub async fn push(&mut self, msg: String) -> Result<(), InboxError> {
        let Some(tx) = self.tx.clone() else {
            return Err(InboxError::Closed);
        };
        let deadline = Instant::now() + INBOX_WAIT;
        loop {
            if tx.is_closed() {
                return Err(InboxError::Closed);
            }
            let (waiting, bytes) = self.unread(&tx);
            if tx.capacity() > 0 && (waiting == 0 || bytes + msg.len() <= INBOX_BYTES) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(InboxError::TooFast);
            }
            // The channel tells its sender of room but not of bytes read:
            // look again shortly.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let len = msg.len();
        match tx.try_send(msg) {
            Ok(()) => {
                self.sizes.push_back(len);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(InboxError::Closed),
            // Only this inbox sends: room seen stays room.
            Err(mpsc::error::TrySendError::Full(_)) => Err(InboxError::TooFast),
        }
    }
}

/// The body of a receiving request.
pub struct ReceiverBody {
    pub receiver: Receiver,
    pub wrap: Wrap,
    pub streaming: bool,
    /// Written first (taken when written).
    pub prelude: Option<String>,
    pub heartbeat: Duration,
    /// Bytes after which a streaming response ends.
    pub limit: usize,
}

struct Progress {
    body: ReceiverBody,
    started: Instant,
    /// When the last frame went out.
    last: Instant,
    sent: usize,
    done: bool,
}

impl ReceiverBody {
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let now = Instant::now();
        let progress = Progress {
            body: self,
            started: now,
            last: now,
            sent: 0,
            done: false,
        };
        futures_util::stream::unfold(progress, |mut p| async move {
            let chunk = p.next().await?;
            Some((Ok(Bytes::from(chunk)), p))
        })
    }
}

impl Progress {
    async fn next(&mut self) -> Option<String> {
        if let Some(prelude) = self.body.prelude.take().filter(|p| !p.is_empty()) {
            self.sent += prelude.len();
            return Some(prelude);
        }
        if self.done {
            return None;
        }
        let session = self.body.receiver.session.clone();
        let wrap = self.body.wrap;
        loop {
            let woken = session.wake.notified();
            if let Some((f, last)) = session.next_frame(self.body.receiver.number) {
                return Some(self.emit(wrap.frame(&f), last));
            }
            let end_by = self.started + RECEIVER_LIFETIME;
            let beat = self.last + self.body.heartbeat;
            tokio::select! {
                _ = woken => continue,
                _ = tokio::time::sleep_until(end_by.min(beat)) => {}
            }
            if Instant::now() >= end_by && self.body.streaming {
                return None;
            }
            // A heartbeat; also a poll's answer at the end of its life.
            return Some(self.emit(wrap.frame(frame::HEARTBEAT), false));
        }
    }

    fn emit(&mut self, chunk: String, last: bool) -> String {
        self.sent += chunk.len();
        self.last = Instant::now();
        if last || !self.body.streaming || self.sent >= self.body.limit {
            self.done = true;
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_ip: usize, max: usize) -> Settings {
        Settings {
            sessions_per_ip: per_ip,
            max_sessions: max,
            ..Settings::default()
        }
    }

    #[test]
    fn seats_are_capped_per_peer_and_in_all() {
        let r = Registry::new(&settings(2, 3));
        let ip = |a: &str| Peer::of_ip(a.parse().unwrap());
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let a1 = r.seat(a).unwrap();
        let a2 = r.seat(a).unwrap();
        assert!(r.seat(a).is_none(), "third of one address");
        let _b1 = r.seat(b).unwrap();
        // Full: b would hold as many as a, so nobody makes room for it.
        assert!(r.seat(b).is_none(), "over the total");
        assert_eq!(r.len(), 3);
        // c holds none: a, the busiest, gives up its oldest seat.
        let c1 = r.seat(c).unwrap();
        assert_eq!(r.len(), 3);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let n = a1.evicted.notified();
            futures_util::pin_mut!(n);
            use std::future::Future;
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            woken.store(
                n.poll(&mut cx).is_ready(),
                std::sync::atomic::Ordering::SeqCst,
            );
        }
        assert!(
            woken.load(std::sync::atomic::Ordering::SeqCst),
            "the oldest of a is told"
        );
        drop(a1);
        assert_eq!(r.len(), 3, "an evicted seat is not counted twice");
        drop((a2, c1));
        assert_eq!(r.len(), 1);
        // Two addresses of one IPv6 /64 are one peer.
        let r = Registry::new(&settings(1, 8));
        let _v = r.seat(ip("2001:db8::1")).unwrap();
        assert!(r.seat(ip("2001:db8::2")).is_none());
        assert!(r.seat(ip("2001:db8:0:1::1")).is_some());
    }

    #[tokio::test]
    async fn inbox_bounds_unread_bytes() {
        let (tx, mut rx) = mpsc::channel(session::QUEUE);
        let mut inbox = Inbox::new(tx);
        // One message always fits an empty channel, however large.
        inbox.push("x".repeat(INBOX_BYTES + 1)).await.unwrap();
        // Nothing read: the next waits INBOX_WAIT, then is refused.
        let r = inbox.push("y".into()).await;
        assert_eq!(r, Err(InboxError::TooFast));
        // Read: room again.
        assert_eq!(rx.recv().await.unwrap().len(), INBOX_BYTES + 1);
        inbox.push("y".into()).await.unwrap();
        drop(rx);
        assert_eq!(inbox.push("z".into()).await, Err(InboxError::Closed));
    }

    /// What a session holds for its client is bounded as it goes out:
    /// JSON escapes make a control character six bytes in a frame (and
    /// eventsource makes `%` three), so counting the messages' own length
    /// let a client that does not read make one poll's frame six times
    /// [`OUTBOX_BYTES`]: 1.5 MiB per session, 768 MiB for 512.
    #[tokio::test]
    async fn the_outbox_bound_counts_what_goes_out() {
        let r = Registry::new(&settings(4, 4));
        let peer = Peer::of_ip("192.0.2.1".parse().unwrap());
        // A protocol that never answers: the test queues for it.
        let handler: Handler = Arc::new(|mut s: session::Session| {
            Box::pin(async move { while s.incoming.recv().await.is_some() {} })
        });
        for (id, c, wrap) in [("ctl", '\u{1}', Wrap::Lines), ("pct", '%', Wrap::Events)] {
            let Opened::Session(s) = r.open(id, peer, "192.0.2.1".parse().unwrap(), &handler)
            else {
                panic!("opened")
            };
            let Attach::Receiver(rx) = s.attach() else {
                panic!("attached")
            };
            assert_eq!(s.next_frame(rx.number), Some(("o".into(), false)));
            // Four messages of 60 000 such characters: 240 000 bytes as
            // the protocol wrote them, within OUTBOX_BYTES by that count.
            for _ in 0..4 {
                s.queue(c.to_string().repeat(60_000));
            }
            let mut largest = 0;
            while let Some((f, last)) = s.next_frame(rx.number) {
                largest = largest.max(wrap.frame(&f).len());
                if last {
                    break;
                }
            }
            // One message always goes out whole: the bound is the outbox,
            // or one message and its escapes.
            let bound = OUTBOX_BYTES.max(6 * 60_000 + 64);
            assert!(
                largest <= bound,
                "{c:?}: a frame of {largest} bytes went out, over {bound}"
            );
        }
    }

    #[tokio::test]
    async fn frames_of_a_session_in_order() {
        let r = Registry::new(&settings(4, 4));
        let peer = Peer::of_ip("192.0.2.1".parse().unwrap());
        let handler: Handler = Arc::new(|mut s: session::Session| {
            Box::pin(async move {
                while let Some(m) = s.incoming.recv().await {
                    if m == "bye" {
                        let _ = s
                            .outgoing
                            .send(Outgoing::Close {
                                code: 3000,
                                reason: "Go away!".into(),
                            })
                            .await;
                        return;
                    }
                    let _ = s.outgoing.send(Outgoing::Text(m)).await;
                }
            })
        });
        let Opened::Session(s) = r.open("abc", peer, "192.0.2.1".parse().unwrap(), &handler) else {
            panic!("opened")
        };
        let other = Peer::of_ip("192.0.2.9".parse().unwrap());
        assert!(matches!(
            r.open("abc", other, "192.0.2.9".parse().unwrap(), &handler),
            Opened::Refused(Refused::Foreign)
        ));
        assert!(r.find("abc", other).is_none());
        let Attach::Receiver(rx) = s.attach() else {
            panic!("attached")
        };
        assert!(matches!(s.attach(), Attach::Busy));
        assert_eq!(s.next_frame(rx.number), Some(("o".into(), false)));
        assert_eq!(s.next_frame(rx.number), None);
        s.deliver(vec!["a".into(), "b\u{2028}".into()])
            .await
            .unwrap();
        // The echo runs on this runtime: wait for its answers.
        let mut got = None;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if let Some(f) = s.next_frame(rx.number) {
                got = Some(f);
                break;
            }
        }
        assert_eq!(got, Some((r#"a["a","b\u2028"]"#.into(), false)));
        s.deliver(vec!["bye".into()]).await.unwrap();
        let mut got = None;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if let Some(f) = s.next_frame(rx.number) {
                got = Some(f);
                break;
            }
        }
        assert_eq!(got, Some((r#"c[3000,"Go away!"]"#.into(), true)));
        drop(rx);
        // Closed: every receiver gets the close frame.
        assert!(matches!(s.attach(), Attach::Closed(f) if f == r#"c[3000,"Go away!"]"#));
    }
}
