//! ChannelData messages (RFC 8656 §12.4) and in-place Data indications (§11.4).
//!
//! Both directions of the data path frame packets here without allocating:
//! the caller receives the payload at an offset that leaves [`HEADROOM`]
//! bytes in front of it, and the header is written into that gap.

use std::net::SocketAddr;

/// Bytes kept free in front of a peer payload: a STUN header (20), an
/// XOR-PEER-ADDRESS for IPv6 (4 + 20) and the DATA attribute header (4).
pub const HEADROOM: usize = 48;
/// Bytes kept free behind a payload for padding to a multiple of 4.
pub const TAILROOM: usize = 4;
/// Largest UDP payload (IPv4: 65,535 − 8 − 20; IPv6 allows 65,527 but the
/// ChannelData length field caps a payload at 65,535 anyway).
pub const MAX_PAYLOAD: usize = 65_535;
/// A buffer large enough for any framed packet.
pub const BUF_LEN: usize = HEADROOM + MAX_PAYLOAD + TAILROOM;

/// Lowest and highest channel numbers a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;

/// A parsed ChannelData header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub channel: u16,
    pub len: usize,
}

/// Parse a ChannelData header; `None` when the packet is too short for the
/// length it announces.
#[inline]
pub fn parse(packet: &[u8]) -> Option<Header> {
    if packet.len() < 4 {
        return None;
    }
    let channel = u16::from_be_bytes([packet[0], packet[1]]);
    let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    if packet.len() < 4 + len {
        return None;
    }
    Some(Header { channel, len })
}

/// Length of a ChannelData frame on a stream: padded to 4 (RFC 8656 §12.5).
#[inline]
pub fn stream_len(payload_len: usize) -> usize {
    4 + ((payload_len + 3) & !3)
}

/// Write a ChannelData header in front of `buf[start..end]` and return the
/// frame's range; with `pad` the frame is zero-padded to a multiple of 4
/// (required on TCP/TLS). Needs 4 bytes of headroom and 3 of tailroom.
#[inline]
pub fn frame_in_place(
    buf: &mut [u8],
    start: usize,
    end: usize,
    channel: u16,
    pad: bool,
) -> (usize, usize) {
    let len = end - start;
    let hdr = start - 4;
    buf[hdr..hdr + 2].copy_from_slice(&channel.to_be_bytes());
    buf[hdr + 2..hdr + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let mut stop = end;
    if pad {
        while !(stop - hdr).is_multiple_of(4) {
            buf[stop] = 0;
            stop += 1;
        }
    }
    (hdr, stop)
}

const MAGIC_COOKIE: u32 = 0x2112_A442;
const METHOD_DATA_INDICATION: u16 = 0x0017;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;

/// Build a Data indication around `buf[start..end]` in place (RFC 8656 §11.4):
/// header, XOR-PEER-ADDRESS and the DATA attribute header go into the
/// headroom, padding into the tailroom. `txid` must be fresh per message
/// (any 12 bytes the caller does not reuse). Returns the message's range.
pub fn data_indication_in_place(
    buf: &mut [u8],
    start: usize,
    end: usize,
    peer: SocketAddr,
    txid: [u8; 12],
) -> (usize, usize) {
    let len = end - start;
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let head = 20 + 4 + addr_len + 4;
    let first = start - head;
    let padded = (len + 3) & !3;
    for b in &mut buf[end..start + padded] {
        *b = 0;
    }
    let body_len = (4 + addr_len) + 4 + padded;
    let h = &mut buf[first..start];
    h[0..2].copy_from_slice(&METHOD_DATA_INDICATION.to_be_bytes());
    h[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(&txid);
    h[20..22].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    crate::proto::stun::write_xor_address(&mut h[24..24 + addr_len], peer, &txid);
    let d = 24 + addr_len;
    h[d..d + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    (first, start + padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_parses() {
        let mut buf = [0u8; 32];
        buf[8..13].copy_from_slice(b"hello");
        let (s, e) = frame_in_place(&mut buf, 8, 13, 0x4001, false);
        assert_eq!((s, e), (4, 13));
        let h = parse(&buf[s..e]).unwrap();
        assert_eq!(
            h,
            Header {
                channel: 0x4001,
                len: 5
            }
        );
        let (s, e) = frame_in_place(&mut buf, 8, 13, 0x4001, true);
        assert_eq!((s, e), (4, 16));
        assert_eq!(stream_len(5), 12);
    }

    #[test]
    fn short_packets_do_not_parse() {
        assert!(parse(&[0x40, 0x00, 0x00]).is_none());
        assert!(parse(&[0x40, 0x00, 0x00, 0x05, 1, 2]).is_none());
    }

    #[test]
    fn data_indication_decodes_with_the_stun_crate() {
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let mut buf = vec![0u8; HEADROOM + 5 + TAILROOM];
        buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"abcde");
        let (s, e) = data_indication_in_place(&mut buf, HEADROOM, HEADROOM + 5, peer, [7; 12]);
        let mut m = stun::message::Message::new();
        m.raw = buf[s..e].to_vec();
        m.decode().unwrap();
        assert_eq!(m.typ.method, stun::message::METHOD_DATA);
        let mut a = stun::xoraddr::XorMappedAddress::default();
        a.get_from_as(&m, stun::attributes::ATTR_XOR_PEER_ADDRESS)
            .unwrap();
        assert_eq!(SocketAddr::new(a.ip, a.port), peer);
        assert_eq!(m.get(stun::attributes::ATTR_DATA).unwrap(), b"abcde");
    }
}
