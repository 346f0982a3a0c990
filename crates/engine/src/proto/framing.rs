//! Stream framing for STUN and ChannelData over TCP/TLS (RFC 8656 §12.5,
//! RFC 4571-style: the messages carry their own lengths).

/// Length of the next complete frame at the start of `buf`, `Ok(None)` if
/// more bytes are needed, `Err(())` if the stream cannot be a TURN stream.
#[inline]
pub fn next_frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let total = match buf[0] >> 6 {
        0 => 20 + len,
        1 => super::channel_data::stream_len(len),
        _ => return Err(()),
    };
    if buf[0] >> 6 == 0 && !len.is_multiple_of(4) {
        return Err(());
    }
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_channel_data_frames() {
        let mut stun = vec![0u8; 28];
        stun[3] = 8;
        assert_eq!(next_frame_len(&stun), Ok(Some(28)));
        assert_eq!(next_frame_len(&stun[..27]), Ok(None));
        let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(next_frame_len(&cd), Ok(Some(12)));
        assert_eq!(next_frame_len(&cd[..9]), Ok(None));
        assert_eq!(next_frame_len(&[0xC0, 0, 0, 0]), Err(()));
        assert_eq!(next_frame_len(&[0x00, 1, 0, 3]), Err(()));
    }
}
