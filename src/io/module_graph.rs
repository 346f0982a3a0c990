//! No module of `io/` imports one that imports it back, directly or
//! through others: read each file's `use super::…` and `use crate::io::…`
//! lines, and look for a cycle among the modules they name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A module's path below `io`, e.g. `["stream", "tcp"]`; `[]` is `io`.
type Module = Vec<String>;

/// Every `.rs` file below `dir`, with the module it holds.
fn modules(dir: &Path, at: &Module, out: &mut Vec<(Module, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut m = at.clone();
            m.push(name);
            modules(&p, &m, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let mut m = at.clone();
            if name != "mod" {
                m.push(name);
            }
            out.push((m, p));
        }
    }
}

/// The `use` declarations of `text` outside its test module, each joined
/// onto one line.
fn uses(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(c) = &mut current {
            c.push_str(l);
        } else if let Some(rest) = l
            .strip_prefix("pub use ")
            .or_else(|| l.strip_prefix("pub(super) use "))
            .or_else(|| l.strip_prefix("pub(crate) use "))
            .or_else(|| l.strip_prefix("use "))
        {
            current = Some(rest.to_owned());
        }
        if current.as_ref().is_some_and(|c| c.ends_with(';')) {
            out.push(current.take().unwrap());
        }
    }
    out
}

/// The modules of `known` that the use path `path`, written in `from`,
/// names: the longest module that each imported path starts with.
fn targets(from: &Module, path: &str, known: &[Module]) -> Vec<Module> {
    let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
    let path = path.trim_end_matches(';');
    // Expand `a::{b, c::{d}}` into `a::b`, `a::c::d`.
    fn expand(p: &str) -> Vec<String> {
        let Some(open) = p.find('{') else {
            return vec![p.to_owned()];
        };
        let prefix = &p[..open];
        let inner = &p[open + 1..p.len() - 1];
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        parts
            .into_iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| expand(&format!("{prefix}{s}")))
            .collect()
    }
    let mut out = Vec::new();
    for p in expand(path) {
        let p = p.split(" as ").next().unwrap_or(&p).to_owned();
        let mut segs: Vec<&str> = p.split("::").collect();
        let mut base: Module;
        if segs.first() == Some(&"crate") && segs.get(1) == Some(&"io") {
            base = Vec::new();
            segs.drain(..2);
        } else if segs.first() == Some(&"super") {
            // The file's parent module: `super` of `a::b` is `a` (for a
            // `mod.rs`, its module is already the directory's).
            base = from.clone();
            while segs.first() == Some(&"super") {
                if base.pop().is_none() {
                    // Above `io`: not ours.
                    base = vec!["<outside>".into()];
                    break;
                }
                segs.remove(0);
            }
            if base.first().is_some_and(|b| b == "<outside>") {
                continue;
            }
        } else if segs.first() == Some(&"self") {
            base = from.clone();
            segs.remove(0);
        } else {
            continue;
        }
        // The longest known module the path goes through.
        let mut found = base.clone();
        let mut m = base;
        for s in segs {
            if s == "self" || s == "*" {
                break;
            }
            m.push(s.to_owned());
            if known.contains(&m) {
                found = m.clone();
            }
        }
        if &found != from {
            out.push(found);
        }
    }
    out
}

/// The import graph of the modules below `dir`.
fn graph(dir: &Path) -> BTreeMap<Module, Vec<Module>> {
    let mut files = Vec::new();
    modules(dir, &Vec::new(), &mut files);
    let known: Vec<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = BTreeMap::new();
    for (m, p) in &files {
        let text = std::fs::read_to_string(p).unwrap();
        let mut to: Vec<Module> = uses(&text)
            .iter()
            .flat_map(|u| targets(m, u, &known))
            .collect();
        to.sort();
        to.dedup();
        g.insert(m.clone(), to);
    }
    g
}

/// A cycle of `g`, if it has one, as the modules along it.
fn cycle(g: &BTreeMap<Module, Vec<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &Module,
        g: &BTreeMap<Module, Vec<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(m).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Open => {
                let at = path.iter().position(|p| p == m).unwrap();
                let mut c = path[at..].to_vec();
                c.push(m.clone());
                return Some(c);
            }
            Mark::New => {}
        }
        marks.insert(m.clone(), Mark::Open);
        path.push(m.clone());
        for n in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, g, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in g.keys() {
        if let Some(c) = visit(m, g, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "io".into()
    } else {
        format!("io::{}", m.join("::"))
    }
}

#[test]
fn io_modules_import_each_other_without_a_cycle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/io");
    let g = graph(&dir);
    // The checker sees the edges that matter: the stream worker uses its
    // connections and the host, and the connections do not use the worker.
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    assert!(g[&m("stream::worker")].contains(&m("stream::tcp")), "{g:?}");
    assert!(g[&m("stream::worker")].contains(&m("host")), "{g:?}");
    assert!(g[&m("stream::tcp")].contains(&m("stream::conn")), "{g:?}");
    assert!(g[&m("udp::shard")].contains(&m("command")), "{g:?}");
    if let Some(c) = cycle(&g) {
        let c: Vec<String> = c.iter().map(name).collect();
        panic!("import cycle in io/: {}", c.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle_written_in_use_lines() {
    // Two files that import each other, as io/tcp.rs and io/worker.rs once
    // did, and a third that only imports.
    let dir = std::env::temp_dir().join(format!("ferroturn-modgraph-{}", std::process::id()));
    let sub = dir.join("stream");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        dir.join("mod.rs"),
        "mod stream;\npub use stream::worker::run;\n",
    )
    .unwrap();
    std::fs::write(
        sub.join("tcp.rs"),
        "use std::rc::Rc;\nuse super::worker::Shared;\n",
    )
    .unwrap();
    std::fs::write(
        sub.join("worker.rs"),
        "use super::{\n    guard,\n    tcp::{self, Conn},\n};\n",
    )
    .unwrap();
    std::fs::write(sub.join("guard.rs"), "use crate::io::stream::tcp as t;\n").unwrap();
    std::fs::write(sub.join("mod.rs"), "pub mod tcp;\n").unwrap();
    let g = graph(&dir);
    let c = cycle(&g).expect("a cycle");
    let names: Vec<String> = c.iter().map(name).collect();
    assert!(
        names.contains(&"io::stream::tcp".into()) && names.contains(&"io::stream::worker".into()),
        "{names:?}"
    );
    // Without tcp's import of the worker there is none.
    std::fs::write(sub.join("tcp.rs"), "use std::rc::Rc;\n").unwrap();
    assert_eq!(cycle(&graph(&dir)), None);
    std::fs::remove_dir_all(&dir).unwrap();
}
