//! `ferroturn man`: ferroturn(1) and ferroturn.toml(5) render with man-db
//! and groff without a single warning, in a UTF-8 locale and in the C
//! locale, and hold every command with every option `--help` lists, and
//! every configuration key with its type and default.

mod surface;

use std::path::{Path, PathBuf};

use ferroturn::config_keys::{KEYS, KeyDefault, SECTIONS, header};
use surface::{bounded, ferroturn, long_options, run, subcommands, temp_dir};

/// `ferroturn man --dir DIR`: both pages, as the package build writes them.
fn write_pages(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let said = ferroturn(&["man", "--dir", dir.to_str().unwrap()]);
    let (one, five) = (dir.join("ferroturn.1"), dir.join("ferroturn.toml.5"));
    for page in [&one, &five] {
        assert!(page.is_file(), "{} not written", page.display());
        assert!(said.contains(page.to_str().unwrap()), "{said}");
    }
    (one, five)
}

/// `man --warnings -l PAGE` as a user would run it, 80 columns wide; it
/// must succeed and say nothing on stderr.
fn render(page: &Path, locale: &str) -> String {
    let out = run(bounded("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("COLUMNS", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("LC_ALL", locale)
        .env_remove("LANG")
        .env_remove("MANOPT"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "man --warnings -l {} ({locale}): {}\n{stderr}",
        page.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The lines of `text` from the one whose trimmed form is `heading` to the
/// next heading of `headings`, one trimmed line per line.
fn block_lines(text: &str, heading: &str, headings: &[String]) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let start = lines
        .iter()
        .position(|l| *l == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?} in:\n{text}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| headings.iter().any(|h| h == l))
        .map_or(lines.len(), |i| start + 1 + i);
    lines[start + 1..end].join("\n")
}

/// [`block_lines`] as one line, for phrases the page may wrap.
fn block(text: &str, heading: &str, headings: &[String]) -> String {
    block_lines(text, heading, headings).replace('\n', " ")
}

#[test]
fn both_pages_render_without_a_warning_in_utf8_and_c_locales() {
    let (one, five) = write_pages("man-render");
    for locale in ["C.UTF-8", "C"] {
        let text = render(&one, locale);
        assert!(text.starts_with("FERROTURN(1)"), "{text}");
        for part in ["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS"] {
            assert!(text.lines().any(|l| l == part), "no {part} in {text}");
        }
        let text = render(&five, locale);
        assert!(text.starts_with("FERROTURN.TOML(5)"), "{text}");
        assert!(text.contains("[[listen]]") && text.contains("EXAMPLE"));
    }
}

/// The check above can fail: groff's warnings do reach stderr.
#[test]
fn a_bad_page_draws_a_warning() {
    let dir = temp_dir("man-bad");
    let page = dir.join("bad.1");
    std::fs::write(&page, ".TH BAD 1\n.SH NAME\nbad \\(zz character\n").unwrap();
    let out = run(bounded("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C.UTF-8"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning"), "{stderr:?}");
}

#[test]
fn page_1_has_every_command_with_every_option() {
    let (one, _) = write_pages("man-1");
    let text = render(&one, "C.UTF-8");
    let subs = subcommands();
    let mut headings: Vec<String> = subs.iter().map(|s| format!("ferroturn {s}")).collect();
    headings.extend(["SIGNALS", "COMMANDS"].map(String::from));
    // An option is documented where a line of its part starts with it
    // (`-c, --config <FILE>`), not where another option's text names it.
    let documents = |part: &str, o: &str| {
        part.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with('-')
                && t.split_whitespace()
                    .take(2)
                    .any(|w| w.trim_end_matches(',') == o)
        })
    };
    let options = block_lines(&text, "OPTIONS", &headings);
    let top = long_options("");
    assert!(top.contains(&"--version".to_owned()), "{top:?}");
    for o in &top {
        assert!(documents(&options, o), "OPTIONS lacks {o}: {options}");
    }
    for sub in &subs {
        let part = block_lines(&text, &format!("ferroturn {sub}"), &headings);
        for o in long_options(sub) {
            assert!(
                documents(&part, &o),
                "ferroturn(1) on {sub} lacks {o}: {part}"
            );
        }
    }
    for name in [
        "FERROTURN_SECRET",
        "FERROTURN_ADMIN_TOKEN",
        "ferroturn.toml(5)",
    ] {
        assert!(text.contains(name), "no {name}");
    }
}

#[test]
fn page_5_has_every_key_with_its_type_and_default() {
    let (_, five) = write_pages("man-5");
    let text = render(&five, "C.UTF-8");
    let title = |s: &str| match s {
        "" => "TOP-LEVEL KEYS".to_owned(),
        s => header(s),
    };
    let mut headings: Vec<String> = SECTIONS.iter().map(|(s, _)| title(s)).collect();
    headings.push("EXAMPLE".into());
    for (section, _) in SECTIONS {
        let part = block(&text, &title(section), &headings);
        for k in KEYS.iter().filter(|k| k.section == *section) {
            let entry = match k.default {
                KeyDefault::Value(v) => format!("{} = {} (default: {v})", k.name, k.kind),
                KeyDefault::Required => format!("{} = {} (required)", k.name, k.kind),
                KeyDefault::Unset(_) => format!("{} = {} (default: ", k.name, k.kind),
            };
            assert!(
                part.contains(&entry),
                "{:?} lacks {entry:?}: {part}",
                title(section)
            );
        }
    }
}

#[test]
fn stdout_holds_the_same_pages_and_other_sections_are_refused() {
    let (one, five) = write_pages("man-stdout");
    assert_eq!(ferroturn(&["man"]), std::fs::read_to_string(one).unwrap());
    assert_eq!(
        ferroturn(&["man", "--section", "5"]),
        std::fs::read_to_string(five).unwrap()
    );
    let out = run(bounded(env!("CARGO_BIN_EXE_ferroturn")).args(["man", "--section", "8"]));
    assert_eq!(out.status.code(), Some(2));
    let out =
        run(bounded(env!("CARGO_BIN_EXE_ferroturn")).args(["man", "--dir", "/nonexistent/dir"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir"));
}

/// Installed as the README says (the pages from stdout in man1 and man5
/// of a man directory), `man ferroturn` and `man ferroturn.toml` find them.
#[test]
fn man_finds_the_pages_installed_as_the_readme_says() {
    let root = temp_dir("man-installed");
    for (section, file) in [("1", "ferroturn.1"), ("5", "ferroturn.toml.5")] {
        let dir = root.join(format!("man{section}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), ferroturn(&["man", "--section", section])).unwrap();
    }
    for (name, title) in [
        ("ferroturn", "FERROTURN(1)"),
        ("ferroturn.toml", "FERROTURN.TOML(5)"),
    ] {
        let out = run(bounded("man")
            .arg(name)
            .env("MANPATH", &root)
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("LC_ALL", "C.UTF-8"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with(title),
            "man {name}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
