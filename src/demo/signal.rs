//! Signaling rooms as a plain state machine: peers join a named room of at
//! most two, and offers, answers, ICE candidates and byes are validated and
//! relayed to the other member, never echoed to the sender.
//!
//! The [`Hub`] takes a peer id and the text of a message and gives back the
//! [`Delivery`]s to make; it has no sockets, so it is tested with values.
//!
//! Client to server (JSON objects, `type` first):
//! - `{"type":"join","room":"NAME"}`: NAME is 1–64 of `A-Z a-z 0-9 _ - .`
//! - `{"type":"offer","sdp":"v=0…"}`, `{"type":"answer","sdp":"v=0…"}`
//! - `{"type":"candidate","candidate":{"candidate":"…","sdpMid":"0","sdpMLineIndex":0}}`
//!   (`"candidate":null` for end of candidates)
//! - `{"type":"bye"}`: hang up and leave the room
//!
//! Server to client: `joined` (`room`, `peers` = members already there),
//! `peer-joined`, `peer-left`, the relayed `offer` / `answer` / `candidate`
//! / `bye`, and `{"type":"error","code":CODE,"message":TEXT}`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Members a room holds: a call is between two browsers.
pub const ROOM_CAPACITY: usize = 2;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    Join { room: String },
    Offer { sdp: String },
    Answer { sdp: String },
    Candidate { candidate: Option<Candidate> },
    Bye {},
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFields {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdpFields {
    sdp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateFields {
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

/// Why a message was refused; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not JSON at all.
    BadJson(String),
    /// JSON, but not the schema of its type.
    BadMessage(String),
    /// A `type` this server does not know.
    UnknownType(String),
    /// Longer than [`MAX_MESSAGE`].
    TooLarge(usize),
    /// A binary WebSocket message (signaling is text).
    Binary,
    /// The room already has [`ROOM_CAPACITY`] members.
    RoomFull(String),
    /// A room name outside the allowed characters or length.
    BadRoom,
    /// Offer, answer, candidate or bye before `join`.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined(String),
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
            Error::RoomFull(_) => "room-full",
            Error::BadRoom => "bad-room",
            Error::NotJoined => "not-joined",
            Error::AlreadyJoined(_) => "already-joined",
        }
    }

    /// A sentence saying what was wrong.
    pub fn text(&self) -> String {
        match self {
            Error::BadJson(e) => format!("malformed JSON: {e}"),
            Error::BadMessage(e) => format!("invalid message: {e}"),
            Error::UnknownType(t) => format!(
                "unknown message type {t:?}: expected join, offer, answer, candidate or bye"
            ),
            Error::TooLarge(n) => {
                format!("message too large: {n} bytes, the limit is {MAX_MESSAGE}")
            }
            Error::Binary => "binary messages are not accepted: send JSON text".into(),
            Error::RoomFull(r) => {
                format!("room full: {r:?} already has {ROOM_CAPACITY} peers")
            }
            Error::BadRoom => {
                format!("invalid room name: use 1 to {MAX_ROOM_NAME} of A-Z a-z 0-9 _ - .")
            }
            Error::NotJoined => "join a room first".into(),
            Error::AlreadyJoined(r) => format!("already in room {r:?}"),
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
    let Some(kind) = value.get("type") else {
        return Err(Error::BadMessage(
            "expected a JSON object with a string \"type\"".into(),
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
    let msg = match kind.as_str() {
        "join" => ClientMessage::Join {
            room: serde_json::from_value::<JoinFields>(fields)
                .map_err(bad)?
                .room,
        },
        "offer" => ClientMessage::Offer {
            sdp: serde_json::from_value::<SdpFields>(fields)
                .map_err(bad)?
                .sdp,
        },
        "answer" => ClientMessage::Answer {
            sdp: serde_json::from_value::<SdpFields>(fields)
                .map_err(bad)?
                .sdp,
        },
        "candidate" => ClientMessage::Candidate {
            candidate: serde_json::from_value::<CandidateFields>(fields)
                .map_err(bad)?
                .candidate,
        },
        _ => {
            serde_json::from_value::<NoFields>(fields).map_err(bad)?;
            ClientMessage::Bye {}
        }
    };
    match &msg {
        ClientMessage::Join { room } if !valid_room(room) => return Err(Error::BadRoom),
        ClientMessage::Offer { sdp } | ClientMessage::Answer { sdp } if !sdp.starts_with("v=0") => {
            return Err(Error::BadMessage(format!(
                "{kind}: \"sdp\" must be a session description starting with v=0"
            )));
        }
        ClientMessage::Candidate { candidate: Some(c) } => {
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
        }
        _ => {}
    }
    Ok(msg)
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

/// Rooms and their members.
#[derive(Debug, Default)]
pub struct Hub {
    rooms: HashMap<String, Vec<PeerId>>,
    /// The room each joined peer is in.
    member_of: HashMap<PeerId, String>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Handle the text of one message from `from`.
    pub fn message(&mut self, from: PeerId, text: &str) -> Vec<Delivery> {
        match parse(text) {
            Ok(msg) => self.handle(from, msg),
            Err(e) => vec![Delivery::error(from, &e)],
        }
    }

    /// Handle one validated message from `from`.
    pub fn handle(&mut self, from: PeerId, msg: ClientMessage) -> Vec<Delivery> {
        match msg {
            ClientMessage::Join { room } => self.join(from, room),
            ClientMessage::Bye {} => {
                if !self.member_of.contains_key(&from) {
                    return vec![Delivery::error(from, &Error::NotJoined)];
                }
                let out = self.to_others(from, serde_json::json!({"type": "bye"}));
                self.remove(from);
                out
            }
            relayed => {
                if !self.member_of.contains_key(&from) {
                    return vec![Delivery::error(from, &Error::NotJoined)];
                }
                let value = serde_json::to_value(&relayed).expect("messages serialize");
                self.to_others(from, value)
            }
        }
    }

    /// `peer`'s connection closed: the others in its room get `peer-left`.
    pub fn disconnect(&mut self, peer: PeerId) -> Vec<Delivery> {
        if !self.member_of.contains_key(&peer) {
            return Vec::new();
        }
        let out = self.to_others(peer, serde_json::json!({"type": "peer-left"}));
        self.remove(peer);
        out
    }

    /// Members of `room`, in joining order.
    pub fn members(&self, room: &str) -> &[PeerId] {
        self.rooms.get(room).map_or(&[], |m| m.as_slice())
    }

    /// Number of rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn join(&mut self, from: PeerId, room: String) -> Vec<Delivery> {
        if let Some(r) = self.member_of.get(&from) {
            return vec![Delivery::error(from, &Error::AlreadyJoined(r.clone()))];
        }
        let members = self.rooms.entry(room.clone()).or_default();
        if members.len() >= ROOM_CAPACITY {
            return vec![Delivery::error(from, &Error::RoomFull(room))];
        }
        let others = members.clone();
        members.push(from);
        self.member_of.insert(from, room.clone());
        let mut out = vec![Delivery::new(
            from,
            serde_json::json!({"type": "joined", "room": room, "peers": others.len()}),
        )];
        for o in others {
            out.push(Delivery::new(o, serde_json::json!({"type": "peer-joined"})));
        }
        out
    }

    fn to_others(&self, from: PeerId, value: Value) -> Vec<Delivery> {
        let Some(room) = self.member_of.get(&from) else {
            return Vec::new();
        };
        let text = value.to_string();
        self.members(room)
            .iter()
            .filter(|&&p| p != from)
            .map(|&to| Delivery {
                to,
                text: text.clone(),
            })
            .collect()
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

    /// A hub with peers 1 and 2 in room "r".
    fn pair() -> Hub {
        let mut hub = Hub::new();
        hub.message(1, r#"{"type":"join","room":"r"}"#);
        hub.message(2, r#"{"type":"join","room":"r"}"#);
        hub
    }

    #[test]
    fn join_tells_newcomer_and_members() {
        let mut hub = Hub::new();
        let out = hub.message(1, r#"{"type":"join","room":"r"}"#);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 1);
        assert_eq!(
            value(&out[0]),
            serde_json::json!({"type":"joined","room":"r","peers":0})
        );
        let out = hub.message(2, r#"{"type":"join","room":"r"}"#);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].to, value(&out[0])["peers"].clone()), (2, 1.into()));
        assert_eq!(out[1].to, 1);
        assert_eq!(value(&out[1]), serde_json::json!({"type":"peer-joined"}));
        assert_eq!(hub.members("r"), &[1, 2]);
    }

    #[test]
    fn third_member_gets_room_full_and_others_nothing() {
        let mut hub = pair();
        let out = hub.message(3, r#"{"type":"join","room":"r"}"#);
        assert_eq!(error_code(&out, 3), "room-full");
        assert!(
            value(&out[0])["message"]
                .as_str()
                .unwrap()
                .contains("room full")
        );
        assert_eq!(hub.members("r"), &[1, 2]);
        // The refused peer is in no room: its offers go nowhere.
        let out = hub.message(3, r#"{"type":"offer","sdp":"v=0\r\n"}"#);
        assert_eq!(error_code(&out, 3), "not-joined");
        // Another room is fine.
        let out = hub.message(3, r#"{"type":"join","room":"s"}"#);
        assert_eq!(value(&out[0])["type"], "joined");
    }

    #[test]
    fn relays_to_the_other_member_only() {
        let mut hub = pair();
        for (text, kind) in [
            (
                r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}"#,
                "offer",
            ),
            (r#"{"type":"answer","sdp":"v=0\r\n"}"#, "answer"),
            (
                r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
                "candidate",
            ),
            (r#"{"type":"candidate","candidate":null}"#, "candidate"),
        ] {
            let out = hub.message(1, text);
            assert_eq!(out.len(), 1, "{text}");
            assert_eq!(out[0].to, 2, "never echoed to the sender");
            let v = value(&out[0]);
            assert_eq!(v["type"], kind);
            let sent: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v, sent, "relayed unchanged");
        }
        let out = hub.message(2, r#"{"type":"answer","sdp":"v=0\r\n"}"#);
        assert_eq!(out[0].to, 1);
    }

    #[test]
    fn alone_in_a_room_messages_go_nowhere() {
        let mut hub = Hub::new();
        hub.message(1, r#"{"type":"join","room":"r"}"#);
        assert!(hub.message(1, r#"{"type":"offer","sdp":"v=0"}"#).is_empty());
    }

    #[test]
    fn disconnect_notifies_peer_left_and_frees_the_place() {
        let mut hub = pair();
        let out = hub.disconnect(1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 2);
        assert_eq!(value(&out[0]), serde_json::json!({"type":"peer-left"}));
        assert_eq!(hub.members("r"), &[2]);
        let out = hub.message(3, r#"{"type":"join","room":"r"}"#);
        assert_eq!(value(&out[0])["peers"], 1);
        // Unknown or never-joined peers disconnect silently.
        assert!(hub.disconnect(99).is_empty());
        hub.disconnect(2);
        hub.disconnect(3);
        assert_eq!(hub.room_count(), 0, "empty rooms are dropped");
    }

    #[test]
    fn bye_is_relayed_and_leaves_the_room() {
        let mut hub = pair();
        let out = hub.message(2, r#"{"type":"bye"}"#);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 1);
        assert_eq!(value(&out[0]), serde_json::json!({"type":"bye"}));
        assert_eq!(hub.members("r"), &[1]);
        assert!(hub.disconnect(2).is_empty(), "no peer-left after bye");
        let out = hub.message(2, r#"{"type":"join","room":"r"}"#);
        assert_eq!(value(&out[0])["type"], "joined");
    }

    #[test]
    fn malformed_messages_get_errors_and_disturb_nobody() {
        let mut hub = pair();
        let cases = [
            ("{not json", "bad-json"),
            ("", "bad-json"),
            ("[1,2]", "bad-message"),
            ("42", "bad-message"),
            (r#"{"type":7}"#, "bad-message"),
            (r#"{"sdp":"v=0"}"#, "bad-message"),
            (r#"{"type":"dance"}"#, "unknown-type"),
            (r#"{"type":"offer"}"#, "bad-message"),
            (r#"{"type":"offer","sdp":5}"#, "bad-message"),
            (r#"{"type":"offer","sdp":"hello"}"#, "bad-message"),
            (r#"{"type":"offer","sdp":"v=0","extra":1}"#, "bad-message"),
            (r#"{"type":"candidate"}"#, "bad-message"),
            (r#"{"type":"bye","x":1}"#, "bad-message"),
            (r#"{"type":"join","room":"r","x":1}"#, "bad-message"),
            (
                r#"{"type":"candidate","candidate":{"candidate":"c"}}"#,
                "bad-message",
            ),
            (r#"{"type":"join","room":"r"}"#, "already-joined"),
        ];
        for (text, code) in cases {
            let out = hub.message(1, text);
            assert_eq!(error_code(&out, 1), code, "{text:?}");
        }
        assert_eq!(hub.members("r"), &[1, 2], "membership unchanged");
        // And the room still works.
        let out = hub.message(1, r#"{"type":"offer","sdp":"v=0"}"#);
        assert_eq!(out[0].to, 2);
    }

    #[test]
    fn sizes_and_names_are_capped() {
        let mut hub = Hub::new();
        let big = format!(
            r#"{{"type":"offer","sdp":"v=0{}"}}"#,
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
            let text = serde_json::json!({"type":"join","room":room}).to_string();
            assert_eq!(
                error_code(&hub.message(1, &text), 1),
                "bad-room",
                "{room:?}"
            );
        }
        let ok = "x".repeat(MAX_ROOM_NAME);
        let text = serde_json::json!({"type":"join","room":ok}).to_string();
        assert_eq!(value(&hub.message(1, &text)[0])["type"], "joined");
        let long = "c".repeat(MAX_CANDIDATE_FIELD + 1);
        let text =
            serde_json::json!({"type":"candidate","candidate":{"candidate":long,"sdpMid":"0"}})
                .to_string();
        assert_eq!(error_code(&hub.message(1, &text), 1), "bad-message");
    }

    #[test]
    fn unknown_type_is_quoted_but_truncated() {
        let e = parse(&serde_json::json!({"type": "z".repeat(500)}).to_string()).unwrap_err();
        assert_eq!(e.code(), "unknown-type");
        assert!(e.text().len() < 200, "{}", e.text());
    }
}
