//! Signaling as a plain state machine, two protocols on one endpoint:
//!
//! **Rooms.** Peers join a named room of at most `[demo] room_size`
//! members, each known by its peer id; offers, answers and ICE candidates
//! name the member they are for (`to`), are validated and reach that
//! member only, marked with their sender (`from`). A peer can address only
//! members of its own room; anything else is an error to the sender alone.
//!
//! **The tutorial's broadcast group.** A session that has not joined a
//! room belongs to the tutorial's group (while it has room: [`GROUP_SIZE`]
//! sessions, [`GROUP_PER_SOURCE`] per IP address or IPv6 /48; a newcomer
//! takes the place of a member silent for [`GROUP_SILENCE`]); its
//! `{"event":"offer"|"answer"|"candidate","data":…}` messages reach every
//! other member of the group unchanged, as the classic WebRTC tutorial's
//! server passes each message to every other session. Joining a room
//! leaves the group.
//!
//! The [`Hub`] takes a peer id and the text of a message and gives back the
//! [`Delivery`]s to make; it has no sockets, so it is tested with values.
//!
//! Client to server (JSON objects, `type` first):
//! - `{"type":"join","room":"NAME"}`: NAME is 1–64 of `A-Z a-z 0-9 _ - .`
//! - `{"type":"offer","to":ID,"sdp":"v=0…"}`, `{"type":"answer","to":ID,"sdp":"v=0…"}`
//! - `{"type":"candidate","to":ID,"candidate":{"candidate":"…","sdpMid":"0","sdpMLineIndex":0}}`
//!   (`"candidate":null` for end of candidates)
//! - `{"type":"bye"}`: hang up and leave the room
//! - `{"event":"offer"|"answer"|"candidate","data":…}`: the tutorial's
//!   messages, outside rooms
//!
//! Server to client: `joined` (`room`, `id` = the peer's own id, `peers` =
//! the ids of the members already there), `peer-joined` and `peer-left`
//! (`from`), the relayed `offer` / `answer` / `candidate` (with `from` and
//! `to`) and `bye` (`from`), the group's messages as sent, and
//! `{"type":"error","code":CODE,"message":TEXT}`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{Peer as Source, Site};

/// Members a room holds unless `[demo] room_size` says otherwise.
pub const DEFAULT_ROOM_SIZE: usize = 4;
/// Largest `[demo] room_size`: a full mesh of 8 is 28 peer connections,
/// 7 uploads of every stream per browser.
pub const MAX_ROOM_SIZE: usize = 8;
/// Sessions the tutorial's broadcast group holds: each of its messages is
/// copied to all the others, so this bounds the fan-out.
pub const GROUP_SIZE: usize = 16;
/// Members of the broadcast group one IP address (or IPv6 /48) may be.
pub const GROUP_PER_SOURCE: usize = 4;
/// A member of the broadcast group that has sent nothing for this long
/// gives its place to a session the group has no room for: sessions that
/// merely stay connected cannot hold the group.
pub const GROUP_SILENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest message accepted, in bytes (an SDP with audio, video, data and
/// trickled candidates is well under 16 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Longest room name.
pub const MAX_ROOM_NAME: usize = 64;
/// Longest ICE candidate line, sdpMid or ufrag accepted.
const MAX_CANDIDATE_FIELD: usize = 1024;

/// A connection's id, unique for the life of the hub.
pub type PeerId = u64;

/// One ICE candidate as `RTCIceCandidate.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Candidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A message from a client, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Join {
        room: String,
    },
    /// An offer, answer or candidate for one member of the sender's room.
    Direct {
        to: PeerId,
        kind: Kind,
    },
    Bye,
    /// The tutorial's `{event, data}`, passed on as it came.
    Broadcast {
        event: String,
        text: String,
    },
}

/// What a [`ClientMessage::Direct`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Kind {
    Offer { sdp: String },
    Answer { sdp: String },
    Candidate { candidate: Option<Candidate> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFields {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdpFields {
    to: PeerId,
    sdp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateFields {
    to: PeerId,
    /// Required, but may be null (end of candidates).
    #[serde(deserialize_with = "nullable")]
    candidate: Option<Candidate>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Candidate>, D::Error> {
    Option::<Candidate>::deserialize(d)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// The tutorial's message: `data` is anything, passed on untouched.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFields {
    event: String,
    #[allow(dead_code)]
    data: Value,
}

/// Why a message was refused; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not JSON at all.
    BadJson(String),
    /// JSON, but not the schema of its type.
    BadMessage(String),
    /// A `type` (or tutorial `event`) this server does not know.
    UnknownType(String),
    /// Longer than [`MAX_MESSAGE`].
    TooLarge(usize),
    /// A binary WebSocket message (signaling is text).
    Binary,
    /// The room already has `room_size` members (the size is given).
    RoomFull(String, usize),
    /// A room name outside the allowed characters or length.
    BadRoom,
    /// Offer, answer, candidate or bye before `join`.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined(String),
    /// `to` names no other member of the sender's room.
    UnknownPeer(PeerId),
    /// A tutorial message from a session that joined a room.
    InRoom(String),
    /// A tutorial message from a session the broadcast group has no place
    /// for.
    GroupFull,
    /// More messages than the session's rate allows; they were dropped.
    RateLimited,
    /// A receiver's outbox had no room for the message: it was dropped
    /// for that receiver (the others got it).
    PeerBusy,
}

impl Error {
    /// The stable error code sent as `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadJson(_) => "bad-json",
            Error::BadMessage(_) => "bad-message",
            Error::UnknownType(_) => "unknown-type",
            Error::TooLarge(_) => "too-large",
            Error::Binary => "binary",
            Error::RoomFull(..) => "room-full",
            Error::BadRoom => "bad-room",
            Error::NotJoined => "not-joined",
            Error::AlreadyJoined(_) => "already-joined",
            Error::UnknownPeer(_) => "unknown-peer",
            Error::InRoom(_) => "in-room",
            Error::GroupFull => "group-full",
            Error::RateLimited => "rate-limited",
            Error::PeerBusy => "peer-busy",
        }
    }

    /// A sentence saying what was wrong.
    pub fn text(&self) -> String {
        match self {
            Error::BadJson(e) => format!("malformed JSON: {e}"),
            Error::BadMessage(e) => format!("invalid message: {e}"),
            Error::UnknownType(t) => format!(
                "unknown message type {t:?}: expected join, offer, answer, candidate or bye (or the tutorial's event offer, answer or candidate)"
            ),
            Error::TooLarge(n) => {
                format!("message too large: {n} bytes, the limit is {MAX_MESSAGE}")
            }
            Error::Binary => "binary messages are not accepted: send JSON text".into(),
            Error::RoomFull(r, size) => {
                format!("room full: {r:?} already has {size} peers")
            }
            Error::BadRoom => {
                format!("invalid room name: use 1 to {MAX_ROOM_NAME} of A-Z a-z 0-9 _ - .")
            }
            Error::NotJoined => "join a room first".into(),
            Error::AlreadyJoined(r) => format!("already in room {r:?}"),
            Error::UnknownPeer(p) => {
                format!("no peer {p} in your room besides you: address a member of your room")
            }
            Error::InRoom(r) => format!(
                "{{event, data}} messages are for sessions outside rooms; this one is in room {r:?}"
            ),
            Error::GroupFull => format!(
                "the broadcast group is full ({GROUP_SIZE} sessions, {GROUP_PER_SOURCE} per address): join a room instead"
            ),
            Error::RateLimited => format!(
                "too many messages: at most {RATE_BURST} ({} KiB) at once and {RATE_PER_SECOND} ({} KiB) a second; the excess was dropped",
                BYTES_BURST >> 10,
                BYTES_PER_SECOND >> 10
            ),
            Error::PeerBusy => "a receiver has not read what it was sent yet: this message was not passed to it (the others got it); send it again later".into(),
        }
    }

    /// The JSON error message for the client.
    pub fn to_json(&self) -> String {
        serde_json::json!({"type": "error", "code": self.code(), "message": self.text()})
            .to_string()
    }
}

/// Parse and validate one text message.
pub fn parse(text: &str) -> Result<ClientMessage, Error> {
    if text.len() > MAX_MESSAGE {
        return Err(Error::TooLarge(text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| Error::BadJson(e.to_string()))?;
    if value.get("type").is_none() && value.get("event").is_some() {
        return parse_event(value, text);
    }
    let Some(kind) = value.get("type") else {
        return Err(Error::BadMessage(
            "expected a JSON object with a string \"type\" (or the tutorial's \"event\" and \"data\")"
                .into(),
        ));
    };
    let Some(kind) = kind.as_str().map(str::to_owned) else {
        return Err(Error::BadMessage("\"type\" must be a string".into()));
    };
    if !matches!(
        kind.as_str(),
        "join" | "offer" | "answer" | "candidate" | "bye"
    ) {
        return Err(Error::UnknownType(truncate(&kind, 64)));
    }
    // serde ignores deny_unknown_fields in internally tagged enums, so
    // each type's fields are read by a struct of its own.
    let Value::Object(mut fields) = value else {
        unreachable!("only objects have a \"type\"")
    };
    fields.remove("type");
    let fields = Value::Object(fields);
    let bad = |e: serde_json::Error| Error::BadMessage(format!("{kind}: {e}"));
    let sdp = |fields| {
        let f = serde_json::from_value::<SdpFields>(fields).map_err(bad)?;
        if !f.sdp.starts_with("v=0") {
            return Err(Error::BadMessage(format!(
                "{kind}: \"sdp\" must be a session description starting with v=0"
            )));
        }
        Ok(f)
    };
    Ok(match kind.as_str() {
        "join" => {
            let room = serde_json::from_value::<JoinFields>(fields)
                .map_err(bad)?
                .room;
            if !valid_room(&room) {
                return Err(Error::BadRoom);
            }
            ClientMessage::Join { room }
        }
        "offer" => {
            let f = sdp(fields)?;
            ClientMessage::Direct {
                to: f.to,
                kind: Kind::Offer { sdp: f.sdp },
            }
        }
        "answer" => {
            let f = sdp(fields)?;
            ClientMessage::Direct {
                to: f.to,
                kind: Kind::Answer { sdp: f.sdp },
            }
        }
        "candidate" => {
            let f = serde_json::from_value::<CandidateFields>(fields).map_err(bad)?;
            if let Some(c) = &f.candidate {
                check_candidate(c)?;
            }
            ClientMessage::Direct {
                to: f.to,
                kind: Kind::Candidate {
                    candidate: f.candidate,
                },
            }
        }
        _ => {
            serde_json::from_value::<NoFields>(fields).map_err(bad)?;
            ClientMessage::Bye
        }
    })
}

/// The tutorial's `{event, data}`: only its three events, only those two
/// fields; `text` is passed on as it is.
fn parse_event(value: Value, text: &str) -> Result<ClientMessage, Error> {
    let f = serde_json::from_value::<EventFields>(value)
        .map_err(|e| Error::BadMessage(format!("event: {e}")))?;
    if !matches!(f.event.as_str(), "offer" | "answer" | "candidate") {
        return Err(Error::UnknownType(truncate(&f.event, 64)));
    }
    Ok(ClientMessage::Broadcast {
        event: f.event,
        text: text.to_owned(),
    })
}

fn check_candidate(c: &Candidate) -> Result<(), Error> {
    let long = [
        Some(&c.candidate),
        c.sdp_mid.as_ref(),
        c.username_fragment.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|s| s.len() > MAX_CANDIDATE_FIELD);
    if long {
        return Err(Error::BadMessage(
            "candidate: a field is longer than 1024 bytes".into(),
        ));
    }
    if c.sdp_mid.is_none() && c.sdp_m_line_index.is_none() {
        return Err(Error::BadMessage(
            "candidate: needs \"sdpMid\" or \"sdpMLineIndex\"".into(),
        ));
    }
    Ok(())
}

fn valid_room(room: &str) -> bool {
    (1..=MAX_ROOM_NAME).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Messages a session may send at once, and its steady rate after that
/// (a token bucket, [`Rate`]): a browser in a full room of 8 sends an
/// offer or answer and a dozen candidates to each of 7 peers at once.
pub const RATE_BURST: u32 = 200;
pub const RATE_PER_SECOND: u32 = 50;
/// Bytes of messages a session may send at once, and its steady rate
/// after that: a room's worth of SDP is a few dozen KiB, and a burst of
/// the largest messages cannot fill another client's outbox many times
/// over ([`Rate`]).
pub const BYTES_BURST: u32 = 256 << 10;
pub const BYTES_PER_SECOND: u32 = 64 << 10;

/// One session's budget, two token buckets: [`RATE_BURST`] messages,
/// refilled at [`RATE_PER_SECOND`], and [`BYTES_BURST`] bytes, refilled
/// at [`BYTES_PER_SECOND`]; a message passes if both can pay for it.
/// Time comes in as microseconds, so it is tested with values.
#[derive(Debug, Clone)]
pub struct Rate {
    /// Message tokens, in millionths.
    micro_tokens: u64,
    /// Byte tokens, in millionths.
    micro_bytes: u64,
    last: u64,
    /// Whether the sender was told of the current run of drops.
    warned: bool,
}

/// What [`Rate::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Drop the message and tell the sender: the first drop of a run.
    DropAndWarn,
    /// Drop it silently: the sender was told already.
    Drop,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            micro_tokens: u64::from(RATE_BURST) * 1_000_000,
            micro_bytes: u64::from(BYTES_BURST) * 1_000_000,
            last: 0,
            warned: false,
        }
    }
}

impl Rate {
    /// Pay for a message of `len` bytes arriving at `now_us`.
    pub fn take(&mut self, now_us: u64, len: usize) -> Admit {
        let elapsed = now_us.saturating_sub(self.last);
        self.micro_tokens = (self.micro_tokens + elapsed * u64::from(RATE_PER_SECOND))
            .min(u64::from(RATE_BURST) * 1_000_000);
        self.micro_bytes = (self.micro_bytes + elapsed * u64::from(BYTES_PER_SECOND))
            .min(u64::from(BYTES_BURST) * 1_000_000);
        self.last = now_us.max(self.last);
        let bytes = len as u64 * 1_000_000;
        if self.micro_tokens >= 1_000_000 && self.micro_bytes >= bytes {
            self.micro_tokens -= 1_000_000;
            self.micro_bytes -= bytes;
            self.warned = false;
            Admit::Pass
        } else if self.warned {
            Admit::Drop
        } else {
            self.warned = true;
            Admit::DropAndWarn
        }
    }
}

/// A message the hub wants sent to one connection (JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: PeerId,
    pub text: String,
}

impl Delivery {
    fn new(to: PeerId, value: Value) -> Delivery {
        Delivery {
            to,
            text: value.to_string(),
        }
    }

    /// An error for `to`.
    pub fn error(to: PeerId, e: &Error) -> Delivery {
        Delivery {
            to,
            text: e.to_json(),
        }
    }
}

/// `text` for each of `peers` but `sender`.
fn copies(text: &str, peers: &[PeerId], sender: PeerId) -> Vec<Delivery> {
    peers
        .iter()
        .filter(|&&p| p != sender)
        .map(|&to| Delivery {
            to,
            text: text.to_owned(),
        })
        .collect()
}

/// Rooms and their members, and the tutorial's broadcast group.
#[derive(Debug)]
pub struct Hub {
    room_size: usize,
    rooms: HashMap<String, Vec<PeerId>>,
    /// The room each joined peer is in.
    member_of: HashMap<PeerId, String>,
    /// Where each connected session comes from.
    sources: HashMap<PeerId, Source>,
    /// The broadcast group, in the order its members came; at most
    /// [`GROUP_SIZE`], [`GROUP_PER_SOURCE`] per [`Site`].
    group: Vec<PeerId>,
    /// When each session last sent a message (or connected), in
    /// microseconds of the hub's clock.
    last_heard: HashMap<PeerId, u64>,
    /// The time, as last told by [`Hub::advance`].
    now_us: u64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_ROOM_SIZE)
    }
}

impl Hub {
    /// A hub whose rooms hold `room_size` peers (2 to [`MAX_ROOM_SIZE`]).
    pub fn new(room_size: usize) -> Hub {
        Hub {
            room_size: room_size.clamp(2, MAX_ROOM_SIZE),
            rooms: HashMap::new(),
            member_of: HashMap::new(),
            sources: HashMap::new(),
            group: Vec::new(),
            last_heard: HashMap::new(),
            now_us: 0,
        }
    }

    /// Tell the hub the time, in microseconds on a monotonic clock (it
    /// never goes back): what tells a silent member of the group.
    pub fn advance(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
    }

    /// A session connected from `source`: it joins the broadcast group if
    /// the group has a place for it.
    pub fn connect(&mut self, peer: PeerId, source: Source) {
        self.sources.insert(peer, source);
        self.last_heard.insert(peer, self.now_us);
        self.enter_group(peer);
    }

    /// Handle the text of one message from `from`.
    pub fn message(&mut self, from: PeerId, text: &str) -> Vec<Delivery> {
        if let Some(t) = self.last_heard.get_mut(&from) {
            *t = self.now_us;
        }
        match parse(text) {
            Ok(msg) => self.handle(from, msg),
            Err(e) => vec![Delivery::error(from, &e)],
        }
    }

    /// Handle one validated message from `from`.
    pub fn handle(&mut self, from: PeerId, msg: ClientMessage) -> Vec<Delivery> {
        match msg {
            ClientMessage::Join { room } => self.join(from, room),
            ClientMessage::Bye => {
                if !self.member_of.contains_key(&from) {
                    return vec![Delivery::error(from, &Error::NotJoined)];
                }
                let out = self.to_others(from, serde_json::json!({"type": "bye", "from": from}));
                self.remove(from);
                out
            }
            ClientMessage::Direct { to, kind } => {
                let Some(room) = self.member_of.get(&from) else {
                    return vec![Delivery::error(from, &Error::NotJoined)];
                };
                if to == from || self.member_of.get(&to) != Some(room) {
                    return vec![Delivery::error(from, &Error::UnknownPeer(to))];
                }
                let mut value = serde_json::to_value(&kind).expect("messages serialize");
                value["from"] = from.into();
                value["to"] = to.into();
                vec![Delivery::new(to, value)]
            }
            ClientMessage::Broadcast { text, .. } => {
                if let Some(room) = self.member_of.get(&from) {
                    return vec![Delivery::error(from, &Error::InRoom(room.clone()))];
                }
                if !self.group.contains(&from) && !self.enter_group(from) {
                    return vec![Delivery::error(from, &Error::GroupFull)];
                }
                copies(&text, &self.group, from)
            }
        }
    }

    /// `peer`'s connection closed: the others in its room get `peer-left`.
    pub fn disconnect(&mut self, peer: PeerId) -> Vec<Delivery> {
        self.group.retain(|&p| p != peer);
        self.sources.remove(&peer);
        self.last_heard.remove(&peer);
        if !self.member_of.contains_key(&peer) {
            return Vec::new();
        }
        let out = self.to_others(peer, serde_json::json!({"type": "peer-left", "from": peer}));
        self.remove(peer);
        out
    }

    /// Members of `room`, in joining order.
    pub fn members(&self, room: &str) -> &[PeerId] {
        self.rooms.get(room).map_or(&[], |m| m.as_slice())
    }

    /// Members of the broadcast group, in the order they came.
    pub fn group(&self) -> &[PeerId] {
        &self.group
    }

    /// Number of rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Put `peer` in the broadcast group if there is a place for it, or
    /// one a member silent for [`GROUP_SILENCE`] gives up: of its own site
    /// when that has [`GROUP_PER_SOURCE`] members, else of any site when
    /// the group is full; the one silent longest.
    fn enter_group(&mut self, peer: PeerId) -> bool {
        let Some(&source) = self.sources.get(&peer) else {
            return false;
        };
        let site = Site::of(source);
        let of_site = |p: &PeerId| self.sources.get(p).map(|&s| Site::of(s)) == Some(site);
        let same_site = self.group.iter().filter(|p| of_site(p)).count();
        let crowded: Option<&dyn Fn(&PeerId) -> bool> = if same_site >= GROUP_PER_SOURCE {
            Some(&of_site)
        } else if self.group.len() >= GROUP_SIZE {
            Some(&|_| true)
        } else {
            None
        };
        if let Some(among) = crowded {
            let silence = GROUP_SILENCE.as_micros() as u64;
            let silent = self
                .group
                .iter()
                .filter(|p| among(p))
                .map(|&p| (self.last_heard.get(&p).copied().unwrap_or(0), p))
                .filter(|&(heard, _)| self.now_us.saturating_sub(heard) >= silence)
                .min();
            let Some((_, gone)) = silent else {
                return false;
            };
            self.group.retain(|&p| p != gone);
        }
        self.group.push(peer);
        true
    }

    fn join(&mut self, from: PeerId, room: String) -> Vec<Delivery> {
        if let Some(r) = self.member_of.get(&from) {
            return vec![Delivery::error(from, &Error::AlreadyJoined(r.clone()))];
        }
        let members = self.rooms.entry(room.clone()).or_default();
        if members.len() >= self.room_size {
            return vec![Delivery::error(
                from,
                &Error::RoomFull(room, self.room_size),
            )];
        }
        let others = members.clone();
        members.push(from);
        self.member_of.insert(from, room.clone());
        self.group.retain(|&p| p != from);
        let mut out = vec![Delivery::new(
            from,
            serde_json::json!({"type": "joined", "room": room, "id": from, "peers": others}),
        )];
        for o in others {
            out.push(Delivery::new(
                o,
                serde_json::json!({"type": "peer-joined", "from": from}),
            ));
        }
        out
    }

    fn to_others(&self, from: PeerId, value: Value) -> Vec<Delivery> {
        let Some(room) = self.member_of.get(&from) else {
            return Vec::new();
        };
        copies(&value.to_string(), self.members(room), from)
    }

    fn remove(&mut self, peer: PeerId) {
        if let Some(room) = self.member_of.remove(&peer)
            && let Some(members) = self.rooms.get_mut(&room)
        {
            members.retain(|&p| p != peer);
            if members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(d: &Delivery) -> Value {
        serde_json::from_str(&d.text).unwrap()
    }

    fn error_code(out: &[Delivery], to: PeerId) -> String {
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, to);
        let v = value(&out[0]);
        assert_eq!(v["type"], "error");
        assert!(!v["message"].as_str().unwrap().is_empty());
        v["code"].as_str().unwrap().to_owned()
    }

    fn source(last: u8) -> Source {
        Source::of_ip(std::net::IpAddr::from([192, 0, 2, last]))
    }

    /// A hub of rooms of `size` with peers `ids` connected from distinct
    /// addresses and joined to room "r" in that order.
    fn room(size: usize, ids: &[PeerId]) -> Hub {
        let mut hub = Hub::new(size);
        for &id in ids {
            hub.connect(id, source(id as u8));
            hub.message(id, r#"{"type":"join","room":"r"}"#);
        }
        hub
    }

    #[test]
    fn join_gives_ids_to_newcomer_and_members() {
        let mut hub = Hub::new(4);
        let out = hub.message(1, r#"{"type":"join","room":"r"}"#);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 1);
        assert_eq!(
            value(&out[0]),
            json!({"type":"joined","room":"r","id":1,"peers":[]})
        );
        hub.message(2, r#"{"type":"join","room":"r"}"#);
        let out = hub.message(3, r#"{"type":"join","room":"r"}"#);
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].to, value(&out[0])),
            (3, json!({"type":"joined","room":"r","id":3,"peers":[1,2]}))
        );
        for (d, to) in out[1..].iter().zip([1, 2]) {
            assert_eq!(d.to, to);
            assert_eq!(value(d), json!({"type":"peer-joined","from":3}));
        }
        assert_eq!(hub.members("r"), &[1, 2, 3]);
    }

    #[test]
    fn room_size_caps_members_and_others_hear_nothing() {
        for size in [2, 4, 8] {
            let ids: Vec<PeerId> = (1..=size as u64).collect();
            let mut hub = room(size, &ids);
            let out = hub.message(99, r#"{"type":"join","room":"r"}"#);
            assert_eq!(error_code(&out, 99), "room-full");
            let text = value(&out[0])["message"].as_str().unwrap().to_owned();
            assert!(
                text.contains(&format!("already has {size} peers")),
                "{text}"
            );
            assert_eq!(hub.members("r"), ids.as_slice());
            // The refused peer is in no room: its offers go nowhere.
            let out = hub.message(99, r#"{"type":"offer","to":1,"sdp":"v=0\r\n"}"#);
            assert_eq!(error_code(&out, 99), "not-joined");
            let out = hub.message(99, r#"{"type":"join","room":"s"}"#);
            assert_eq!(value(&out[0])["type"], "joined");
        }
        // Out-of-range sizes are clamped (the config refuses them first).
        assert_eq!(Hub::new(1).room_size, 2);
        assert_eq!(Hub::new(100).room_size, MAX_ROOM_SIZE);
    }

    #[test]
    fn direct_messages_reach_the_addressee_only_marked_with_both_ids() {
        let mut hub = room(4, &[1, 2, 3]);
        for (text, kind) in [
            (
                r#"{"type":"offer","to":3,"sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}"#,
                "offer",
            ),
            (r#"{"type":"answer","to":3,"sdp":"v=0\r\n"}"#, "answer"),
            (
                r#"{"type":"candidate","to":3,"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
                "candidate",
            ),
            (
                r#"{"type":"candidate","to":3,"candidate":null}"#,
                "candidate",
            ),
        ] {
            let out = hub.message(1, text);
            assert_eq!(out.len(), 1, "{text}");
            assert_eq!(out[0].to, 3, "to the addressee only");
            let v = value(&out[0]);
            assert_eq!(v["type"], kind);
            let mut sent: Value = serde_json::from_str(text).unwrap();
            sent["from"] = 1.into();
            assert_eq!(v, sent, "relayed unchanged, with the sender");
        }
        let out = hub.message(3, r#"{"type":"answer","to":1,"sdp":"v=0\r\n"}"#);
        assert_eq!((out[0].to, value(&out[0])["from"].clone()), (1, 3.into()));
    }

    #[test]
    fn only_members_of_the_own_room_can_be_addressed() {
        let mut hub = room(4, &[1, 2]);
        hub.message(5, r#"{"type":"join","room":"other"}"#);
        for to in [5, 77, 1] {
            let text = json!({"type":"offer","to":to,"sdp":"v=0"}).to_string();
            let out = hub.message(1, &text);
            assert_eq!(error_code(&out, 1), "unknown-peer", "to {to}");
            assert!(
                value(&out[0])["message"]
                    .as_str()
                    .unwrap()
                    .contains(&to.to_string())
            );
        }
        // A message without `to`, or with a `to` that is not an id.
        for text in [
            r#"{"type":"offer","sdp":"v=0"}"#,
            r#"{"type":"offer","to":"2","sdp":"v=0"}"#,
            r#"{"type":"candidate","to":-1,"candidate":null}"#,
        ] {
            assert_eq!(
                error_code(&hub.message(1, text), 1),
                "bad-message",
                "{text}"
            );
        }
        // The room still works.
        let out = hub.message(1, r#"{"type":"offer","to":2,"sdp":"v=0"}"#);
        assert_eq!(out[0].to, 2);
    }

    #[test]
    fn alone_in_a_room_there_is_nobody_to_address() {
        let mut hub = room(4, &[1]);
        let out = hub.message(1, r#"{"type":"offer","to":2,"sdp":"v=0"}"#);
        assert_eq!(error_code(&out, 1), "unknown-peer");
    }

    #[test]
    fn disconnect_notifies_peer_left_and_frees_the_place() {
        let mut hub = room(2, &[1, 2]);
        let out = hub.disconnect(1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 2);
        assert_eq!(value(&out[0]), json!({"type":"peer-left","from":1}));
        assert_eq!(hub.members("r"), &[2]);
        let out = hub.message(3, r#"{"type":"join","room":"r"}"#);
        assert_eq!(value(&out[0])["peers"], json!([2]));
        // Unknown or never-joined peers disconnect silently.
        assert!(hub.disconnect(99).is_empty());
        hub.disconnect(2);
        hub.disconnect(3);
        assert_eq!(hub.room_count(), 0, "empty rooms are dropped");
    }

    #[test]
    fn bye_is_relayed_to_every_member_and_leaves_the_room() {
        let mut hub = room(4, &[1, 2, 3]);
        let out = hub.message(2, r#"{"type":"bye"}"#);
        assert_eq!(out.len(), 2);
        for (d, to) in out.iter().zip([1, 3]) {
            assert_eq!(d.to, to);
            assert_eq!(value(d), json!({"type":"bye","from":2}));
        }
        assert_eq!(hub.members("r"), &[1, 3]);
        assert!(hub.disconnect(2).is_empty(), "no peer-left after bye");
        let out = hub.message(2, r#"{"type":"join","room":"r"}"#);
        assert_eq!(value(&out[0])["type"], "joined");
    }

    #[test]
    fn malformed_messages_get_errors_and_disturb_nobody() {
        let mut hub = room(4, &[1, 2]);
        let cases = [
            ("{not json", "bad-json"),
            ("", "bad-json"),
            ("[1,2]", "bad-message"),
            ("42", "bad-message"),
            (r#"{"type":7}"#, "bad-message"),
            (r#"{"sdp":"v=0"}"#, "bad-message"),
            (r#"{"type":"dance"}"#, "unknown-type"),
            (r#"{"type":"offer","to":2}"#, "bad-message"),
            (r#"{"type":"offer","to":2,"sdp":5}"#, "bad-message"),
            (r#"{"type":"offer","to":2,"sdp":"hello"}"#, "bad-message"),
            (
                r#"{"type":"offer","to":2,"sdp":"v=0","extra":1}"#,
                "bad-message",
            ),
            (r#"{"type":"candidate","to":2}"#, "bad-message"),
            (r#"{"type":"bye","x":1}"#, "bad-message"),
            (r#"{"type":"join","room":"r","x":1}"#, "bad-message"),
            (
                r#"{"type":"candidate","to":2,"candidate":{"candidate":"c"}}"#,
                "bad-message",
            ),
            (r#"{"type":"join","room":"r"}"#, "already-joined"),
            // The tutorial's messages are for sessions outside rooms.
            (r#"{"event":"offer","data":{}}"#, "in-room"),
        ];
        for (text, code) in cases {
            let out = hub.message(1, text);
            assert_eq!(error_code(&out, 1), code, "{text:?}");
        }
        assert_eq!(hub.members("r"), &[1, 2], "membership unchanged");
        let out = hub.message(1, r#"{"type":"offer","to":2,"sdp":"v=0"}"#);
        assert_eq!(out[0].to, 2);
    }

    #[test]
    fn sizes_and_names_are_capped() {
        let mut hub = Hub::new(4);
        let big = format!(
            r#"{{"type":"offer","to":2,"sdp":"v=0{}"}}"#,
            "a".repeat(MAX_MESSAGE)
        );
        let out = hub.message(1, &big);
        assert_eq!(error_code(&out, 1), "too-large");
        assert!(
            value(&out[0])["message"]
                .as_str()
                .unwrap()
                .contains("65536")
        );
        for room in ["", "a b", "é", &"x".repeat(MAX_ROOM_NAME + 1), "../x/"] {
            let text = json!({"type":"join","room":room}).to_string();
            assert_eq!(
                error_code(&hub.message(1, &text), 1),
                "bad-room",
                "{room:?}"
            );
        }
        let ok = "x".repeat(MAX_ROOM_NAME);
        let text = json!({"type":"join","room":ok}).to_string();
        assert_eq!(value(&hub.message(1, &text)[0])["type"], "joined");
        let long = "c".repeat(MAX_CANDIDATE_FIELD + 1);
        let text = json!({"type":"candidate","to":2,"candidate":{"candidate":long,"sdpMid":"0"}})
            .to_string();
        assert_eq!(error_code(&hub.message(1, &text), 1), "bad-message");
    }

    #[test]
    fn unknown_type_is_quoted_but_truncated() {
        let e = parse(&json!({"type": "z".repeat(500)}).to_string()).unwrap_err();
        assert_eq!(e.code(), "unknown-type");
        assert!(e.text().len() < 300, "{}", e.text());
    }

    #[test]
    fn tutorial_messages_reach_every_other_session_outside_rooms() {
        let mut hub = Hub::new(4);
        for id in 1..=4 {
            hub.connect(id, source(id as u8));
        }
        // 4 joins a room: it leaves the group.
        hub.message(4, r#"{"type":"join","room":"r"}"#);
        assert_eq!(hub.group(), &[1, 2, 3]);
        let text = r#"{"event":"offer","data":{"type":"offer","sdp":"v=0\r\n"}}"#;
        let out = hub.message(1, text);
        let to: Vec<PeerId> = out.iter().map(|d| d.to).collect();
        assert_eq!(to, [2, 3], "every other member, never the sender");
        assert!(out.iter().all(|d| d.text == text), "passed on as sent");
        for text in [
            r#"{"event":"answer","data":{"type":"answer","sdp":"v=0"}}"#,
            r#"{"event":"candidate","data":{"candidate":"c","sdpMid":"0"}}"#,
            r#"{"event":"candidate","data":null}"#,
        ] {
            assert_eq!(hub.message(2, text).len(), 2, "{text}");
        }
        for (text, code) in [
            (r#"{"event":"hello","data":1}"#, "unknown-type"),
            (r#"{"event":"offer"}"#, "bad-message"),
            (r#"{"event":"offer","data":1,"to":2}"#, "bad-message"),
            (r#"{"event":5,"data":1}"#, "bad-message"),
        ] {
            assert_eq!(error_code(&hub.message(1, text), 1), code, "{text}");
        }
        // A member that leaves hears nothing more.
        hub.disconnect(3);
        assert_eq!(hub.message(1, text).len(), 1);
    }

    #[test]
    fn the_group_is_bounded_in_size_and_per_address() {
        let mut hub = Hub::new(4);
        let text = r#"{"event":"offer","data":{}}"#;
        // One address: GROUP_PER_SOURCE members, the next ones left out.
        for id in 1..=GROUP_PER_SOURCE as u64 + 2 {
            hub.connect(id, source(1));
        }
        assert_eq!(hub.group().len(), GROUP_PER_SOURCE);
        let outsider = GROUP_PER_SOURCE as u64 + 1;
        assert_eq!(
            error_code(&hub.message(outsider, text), outsider),
            "group-full"
        );
        // A place frees up: the outsider takes it when it speaks.
        hub.disconnect(1);
        assert_eq!(hub.message(outsider, text).len(), GROUP_PER_SOURCE - 1);
        // Many addresses: GROUP_SIZE in all.
        for id in 100..100 + GROUP_SIZE as u64 {
            hub.connect(id, source(id as u8));
        }
        assert_eq!(hub.group().len(), GROUP_SIZE);
        assert_eq!(hub.message(2, text).len(), GROUP_SIZE - 1);
    }

    /// An IPv6 /48 counts as one address in the group, and members that
    /// stay silent for GROUP_SILENCE give their places to newcomers: the
    /// one silent longest first, of the newcomer's own site when that is
    /// at its cap.
    #[test]
    fn silent_members_give_their_places_and_ipv6_counts_by_48() {
        let v6 = |n: u16| Source::of_ip(format!("2001:db8:7:{n}::1").parse().unwrap());
        let text = r#"{"event":"offer","data":{}}"#;
        let mut hub = Hub::new(4);
        // Many /64s of one /48: GROUP_PER_SOURCE members.
        for id in 1..=GROUP_PER_SOURCE as u64 + 1 {
            hub.connect(id, v6(id as u16));
        }
        assert_eq!(hub.group(), [1, 2, 3, 4]);
        // Other addresses fill the group, all at time 0.
        for id in 10..10 + (GROUP_SIZE - GROUP_PER_SOURCE) as u64 {
            hub.connect(id, source(id as u8));
        }
        assert_eq!(hub.group().len(), GROUP_SIZE);
        let silence = GROUP_SILENCE.as_micros() as u64;
        // Not silent long enough: a newcomer stays out.
        hub.advance(silence - 1);
        hub.connect(100, source(100));
        assert!(!hub.group().contains(&100));
        // Member 10 and member 2 spoke since; at GROUP_SILENCE the
        // newcomer takes the place of 1, silent longest of all (10 would
        // be as old, but it spoke).
        hub.advance(silence / 2);
        hub.message(10, text);
        hub.message(2, text);
        hub.advance(silence);
        hub.connect(101, source(101));
        assert!(hub.group().contains(&101));
        assert!(!hub.group().contains(&1));
        assert!(hub.group().contains(&10) && hub.group().contains(&2));
        // The next newcomer takes the place of the next silent longest
        // (3, which came before 4 and the others).
        hub.connect(102, source(102));
        assert!(hub.group().contains(&102) && !hub.group().contains(&3));
        assert_eq!(hub.group().len(), GROUP_SIZE);
        // One that lost its place gets it back the same way when it
        // speaks, and hears group-full while nobody is silent.
        hub.advance(2 * silence);
        for &p in &hub.group().to_vec() {
            hub.message(p, text);
        }
        assert_eq!(error_code(&hub.message(1, text), 1), "group-full");

        // A fifth of a /48 at its cap takes the place of a silent member
        // of its own site, not of an older silent one of another address.
        let mut hub = Hub::new(4);
        hub.connect(50, source(50));
        hub.advance(silence / 2);
        for id in 1..=GROUP_PER_SOURCE as u64 {
            hub.connect(id, v6(id as u16));
        }
        hub.advance(2 * silence);
        hub.message(2, text);
        hub.connect(5, v6(5));
        assert_eq!(hub.group(), [50, 2, 3, 4, 5]);
    }

    #[test]
    fn rate_allows_a_burst_then_a_steady_rate_and_warns_once_per_run() {
        let mut rate = Rate::default();
        let passed = (0..1000)
            .filter(|_| rate.take(0, 100) == Admit::Pass)
            .count();
        assert_eq!(passed, RATE_BURST as usize);
        let mut rate = Rate::default();
        let mut verdicts = Vec::new();
        for _ in 0..RATE_BURST + 3 {
            verdicts.push(rate.take(1_000, 100));
        }
        assert_eq!(
            &verdicts[RATE_BURST as usize..],
            [Admit::DropAndWarn, Admit::Drop, Admit::Drop]
        );
        // One second later: RATE_PER_SECOND more, then a new warning.
        let later = 1_001_000;
        let passed = (0..RATE_PER_SECOND)
            .filter(|_| rate.take(later, 100) == Admit::Pass)
            .count();
        assert_eq!(passed, RATE_PER_SECOND as usize);
        assert_eq!(rate.take(later, 100), Admit::DropAndWarn);
    }

    /// Large messages spend the byte budget first: BYTES_BURST at once,
    /// then BYTES_PER_SECOND, however many messages are left.
    #[test]
    fn rate_budgets_bytes_too() {
        let mut rate = Rate::default();
        let big = MAX_MESSAGE;
        let at_once = BYTES_BURST as usize / big;
        let passed = (0..20).filter(|_| rate.take(0, big) == Admit::Pass).count();
        assert_eq!(passed, at_once);
        // Not even a small one is left (the sender was told already).
        assert_eq!(rate.take(0, 10), Admit::Drop);
        let second = 1_000_000;
        let passed = (0..20)
            .filter(|_| rate.take(second, big) == Admit::Pass)
            .count();
        assert_eq!(passed, BYTES_PER_SECOND as usize / big);
    }
}
