//! The usage stream as `redis-cli` prints it (README "Usage events"),
//! shared by the tests that read it.

/// The entries of `redis-cli XREVRANGE`'s output: each an id line, then
/// its fields and values, one a line.
pub fn stream_entries(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let is_id = |l: &str| {
        l.split_once('-')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    };
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(id) = lines.next() {
        assert!(is_id(id), "not an entry id: {id:?} in\n{text}");
        let mut e = std::collections::HashMap::new();
        while let Some(field) = lines.next_if(|l| !is_id(l)) {
            let value = lines
                .next()
                .unwrap_or_else(|| panic!("{field} has no value"));
            e.insert(field.to_owned(), value.to_owned());
        }
        out.push(e);
    }
    out
}
