//! The revocation table in Redis (`ferroturn/realm/<realm>/revoked`: a
//! hash of name → the Unix time its revocation ends), read whole when a
//! node connects. Anything with access to Redis may have written there,
//! so an entry that is no revocation (a name that is not UTF-8, an end
//! that is not a number of seconds) is skipped, and said so in the log:
//! one such entry never keeps the node from connecting.

use redis::AsyncCommands;

use super::{COMMAND_TIMEOUT, LOG, Lost, nodes, unix_now};

/// What the hash holds, sorted out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Table {
    /// Revocations in force: name and end.
    pub live: Vec<(String, u64)>,
    /// Names whose revocation has ended, to drop from the hash.
    pub ended: Vec<Vec<u8>>,
    /// Entries that are no revocation, left as they are.
    pub malformed: usize,
}

/// Sort the hash's `entries` as read at the Unix time `now`.
pub(super) fn sort_out(entries: Vec<(Vec<u8>, Vec<u8>)>, now: u64) -> Table {
    let mut t = Table::default();
    for (name, until) in entries {
        let until = std::str::from_utf8(&until)
            .ok()
            .and_then(|u| u.parse::<u64>().ok());
        match (String::from_utf8(name), until) {
            (Ok(name), Some(until)) if until > now => t.live.push((name, until)),
            (Ok(name), Some(_)) => t.ended.push(name.into_bytes()),
            _ => t.malformed += 1,
        }
    }
    t
}

/// Read the revoked names whose revocation has not ended (and drop the
/// ended ones from the hash).
pub(super) async fn load(
    keys: &nodes::Keys,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<(String, u64)>, Lost> {
    let read = async {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(keys.revoked()).await?;
        let table = sort_out(entries, unix_now());
        if !table.ended.is_empty() {
            conn.hdel::<_, _, ()>(keys.revoked(), &table.ended).await?;
        }
        redis::RedisResult::Ok(table)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, read).await {
        Ok(Ok(table)) => {
            if table.malformed > 0 {
                tracing::warn!(
                    target: LOG,
                    entries = table.malformed,
                    key = %keys.revoked(),
                    "entries of the revocation table that are no revocation (the value must be a Unix time in seconds) are skipped"
                );
            }
            Ok(table.live)
        }
        Ok(Err(e)) => Err(format!("read revocations: {e}")),
        Err(_) => Err("read revocations: timed out".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_out() {
        let e = |n: &[u8], u: &[u8]| (n.to_vec(), u.to_vec());
        let t = sort_out(
            vec![
                e(b"kim", b"200"),
                e(b"old", b"100"),
                e(b"words", b"tomorrow"),
                e(b"negative", b"-5"),
                e(b"huge", b"99999999999999999999999"),
                e(b"empty", b""),
                e(b"\xff", b"200"),
            ],
            100,
        );
        assert_eq!(t.live, vec![("kim".to_owned(), 200)]);
        assert_eq!(t.ended, vec![b"old".to_vec()]);
        assert_eq!(t.malformed, 5);
    }
}
