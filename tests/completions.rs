//! `ferroturn completions SHELL`: each script loads in its shell without a
//! word on stderr, and completing in that shell offers every subcommand,
//! every long option of each, the values of a closed list and file names
//! for `--config`. bash and fish are asked directly (`_ferroturn`,
//! `complete -C`); zsh's completion system only runs inside its line
//! editor, so an interactive zsh is driven through a pseudo-terminal
//! (zsh/zpty) and a Tab typed there.

mod surface;

use std::path::{Path, PathBuf};

use surface::{bounded, ferroturn, long_options, run, subcommands, temp_dir};

/// The script for `shell`, written into a new directory (zsh finds it in
/// `$fpath` by its file name, `_ferroturn`).
fn script(shell: &str) -> PathBuf {
    let dir = temp_dir(&format!("completions-{shell}"));
    let name = match shell {
        "zsh" => "_ferroturn".to_owned(),
        s => format!("ferroturn.{s}"),
    };
    let path = dir.join(name);
    let text = ferroturn(&["completions", shell]);
    assert!(text.contains("ferroturn"), "{text}");
    std::fs::write(&path, text).unwrap();
    path
}

/// A directory holding `site.toml`, where `--config si` completes to it.
fn files_dir(shell: &str) -> PathBuf {
    let dir = temp_dir(&format!("completions-files-{shell}"));
    std::fs::write(dir.join("site.toml"), "").unwrap();
    std::fs::write(dir.join("other.txt"), "").unwrap();
    dir
}

/// Runs `shell` with `args`; stdout, and stderr which must be empty when
/// `quiet`.
fn shell(program: &str, args: &[&str], cwd: &Path, quiet: bool) -> String {
    let out = run(bounded(program)
        .args(args)
        .current_dir(cwd)
        .env("HOME", cwd));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && (!quiet || stderr.is_empty()),
        "{program} {args:?}: {}\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every word of `expected` is among `offered`.
fn assert_offers(shell: &str, line: &str, offered: &[String], expected: &[String]) {
    for e in expected {
        assert!(
            offered.contains(e),
            "{shell}: completing {line:?} does not offer {e:?}; it offers {offered:?}"
        );
    }
}

/// The lines each shell is asked to complete, with what it must offer.
fn cases() -> Vec<(String, Vec<String>)> {
    let subs = subcommands();
    let mut cases = vec![("ferroturn ".to_owned(), subs.clone())];
    for sub in &subs {
        cases.push((format!("ferroturn {sub} --"), long_options(sub)));
    }
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    cases.push((
        "ferroturn completions ".into(),
        words(&["bash", "zsh", "fish"]),
    ));
    cases.push(("ferroturn man --section ".into(), words(&["1", "5"])));
    cases.push(("ferroturn check --config si".into(), words(&["site.toml"])));
    cases
}

#[test]
fn bash_loads_the_script_and_completes() {
    let script = script("bash");
    let dir = files_dir("bash");
    let s = script.to_str().unwrap();
    let loaded = shell(
        "bash",
        &[
            "--norc",
            "--noprofile",
            "-c",
            "source \"$0\" && complete -p ferroturn",
            s,
        ],
        &dir,
        true,
    );
    assert!(
        loaded.contains("-F _ferroturn") && loaded.trim_end().ends_with(" ferroturn"),
        "{loaded}"
    );
    // The function bash calls on Tab, with the variables bash sets for it.
    // (Outside a real Tab, `compopt` complains on stderr: not checked here.)
    let complete = "source \"$0\"; COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); \
         COMP_LINE=\"$*\"; COMP_POINT=${#COMP_LINE}; \
         _ferroturn ferroturn \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"; \
         printf '%s\\n' \"${COMPREPLY[@]}\"";
    for (line, expected) in cases() {
        let mut words: Vec<&str> = line.split(' ').collect();
        let mut args = vec!["--norc", "--noprofile", "-c", complete, s];
        args.append(&mut words);
        let offered: Vec<String> = shell("bash", &args, &dir, false)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_offers("bash", &line, &offered, &expected);
    }
}

#[test]
fn fish_parses_the_script_and_completes() {
    let script = script("fish");
    let dir = files_dir("fish");
    let s = script.to_str().unwrap();
    shell("fish", &["--no-config", "--no-execute", s], &dir, true);
    for (line, expected) in cases() {
        let cmd = format!("source {s}; complete --do-complete '{line}'");
        let offered: Vec<String> = shell("fish", &["--no-config", "-c", &cmd], &dir, true)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_owned())
            .collect();
        assert_offers("fish", &line, &offered, &expected);
    }
}

/// Drives an interactive `zsh -f` in a pseudo-terminal: compinit with the
/// script's directory in `$fpath`, `compadd` wrapped to print each match it
/// adds as `match:WORD`, then the line typed with a Tab. Each step waits
/// for a marker the step prints (split by quotes in the echoed line, so
/// that the echo does not match); the Tab's completion ends with one.
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty || exit 3
zpty comp zsh -f -i
step() { zpty -w comp "$1; print 'STEP''-DONE'"; zpty -r comp out '*STEP-DONE*' }
step "PS1='> '; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
step 'compadd() { if (( ${@[(I)-[OAD]]} )); then builtin compadd "$@"; return; fi; local -a got; builtin compadd -O got "$@"; print -rl -- "match:"${^got}; builtin compadd "$@" }'
step "comppostfuncs=(completion_done); completion_done() { print 'COMPLETION''-DONE' }; bindkey '^I' complete-word"
zpty -w -n comp "$2"$'\t'
zpty -r comp out '*COMPLETION-DONE*'
print -r -- "$out"
zpty -d comp
"#;

#[test]
fn zsh_loads_the_script_and_completes_on_tab() {
    let script = script("zsh");
    let dir = files_dir("zsh");
    let fpath = script.parent().unwrap().to_str().unwrap();
    // Sourced after compinit, the script registers itself for ferroturn.
    let loaded = shell(
        "zsh",
        &[
            "-f",
            "-c",
            "autoload -U compinit && compinit -u -D && source \"$1\" && print -r -- $_comps[ferroturn]",
            "zsh",
            script.to_str().unwrap(),
        ],
        &dir,
        true,
    );
    assert_eq!(loaded.trim(), "_ferroturn");
    let driver = dir.join("driver.zsh");
    std::fs::write(&driver, ZSH_DRIVER).unwrap();
    for (line, expected) in cases() {
        let out = shell(
            "zsh",
            &["-f", driver.to_str().unwrap(), fpath, &line],
            &dir,
            true,
        );
        let offered: Vec<String> = out
            .split("match:")
            .skip(1)
            .map(|m| {
                m.split(|c: char| c.is_whitespace() || c == '\x1b')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_offers("zsh", &line, &offered, &expected);
    }
}

/// The three shells are the ones offered; another is refused.
#[test]
fn another_shell_is_refused() {
    let out = run(bounded(env!("CARGO_BIN_EXE_ferroturn")).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash, zsh, fish"));
}
