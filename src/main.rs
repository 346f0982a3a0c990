//! The `ferroturn` command: run the server, check a config, mint credentials,
//! derive static users' keys, talk to the admin API, and print its own
//! manual pages and shell completions (from these same definitions, so
//! that they cannot drift from `--help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};

#[derive(Parser)]
#[command(
    name = "ferroturn",
    version,
    about = "A STUN/TURN server (RFC 8489, RFC 8656)",
    long_about = "A STUN/TURN server (RFC 8489, RFC 8656) for WebRTC: it answers STUN Binding \
requests, so that clients learn their public address, and relays media through TURN \
allocations over UDP, TCP and TLS, with long-term and TURN REST API credentials.

Without a command it runs the server on --config FILE (see ferroturn.toml(5)). The \
commands check a configuration, mint credentials, derive static users' keys, list and \
close the sessions of a running server, and print this manual and shell completions."
)]
struct Cli {
    /// Configuration file (TOML); runs the server when no command is given.
    #[arg(long, short, global = true, value_name = "FILE", value_hint = ValueHint::FilePath)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<CliCommand>,
}

/// Where the admin API is and how to show it the token: the options of
/// every command that talks to it.
#[derive(Args)]
struct AdminArgs {
    /// Admin API: IP:PORT or a socket path; defaults to [admin] in --config, else /run/ferroturn/admin.sock.
    #[arg(long, value_name = "ADDR|SOCKET")]
    admin: Option<String>,
    /// File holding the bearer token; defaults to $FERROTURN_ADMIN_TOKEN, else [admin] token in --config.
    #[arg(long, value_name = "FILE", conflicts_with = "token", value_hint = ValueHint::FilePath)]
    token_file: Option<PathBuf>,
    /// Bearer token (visible to other users in ps: prefer --token-file).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run the server (the default).
    Run,
    /// Run the server plus the signaling demo's web pages ([demo] address).
    Demo,
    /// Validate a configuration file: exit 0, or print FILE: KEY: REASON and exit 1.
    Check,
    /// Print TURN REST API credentials (coturn use-auth-secret / eturnal scheme).
    Credentials {
        /// Shared secret (visible in `ps`: prefer --secret-file or $FERROTURN_SECRET).
        #[arg(long, conflicts_with = "secret_file")]
        secret: Option<String>,
        /// A file holding the shared secret: its first line, without surrounding blanks.
        /// Without it or --secret: $FERROTURN_SECRET, else the first secret of
        /// --config ([auth] secrets, then secret_files).
        #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
        secret_file: Option<PathBuf>,
        /// Name after the expiry in the username.
        #[arg(long, default_value = "user")]
        user: String,
        /// Validity, e.g. 3600, 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Print an RTCIceServer JSON entry instead.
        #[arg(long)]
        json: bool,
        /// turn:/stun: URIs for the JSON entry; derived from --config if omitted.
        #[arg(long = "url")]
        urls: Vec<String>,
    },
    /// Print a static user's long-term key, to write in [auth] users instead of the password.
    ///
    /// The key is the one of RFC 8489 §9.2.2, as `turnadmin -k` prints it.
    /// The password is read from stdin (prompted for on a terminal).
    Password {
        /// The user name.
        #[arg(long)]
        user: String,
        /// The realm; defaults to `realm` in --config.
        #[arg(long)]
        realm: Option<String>,
        /// The password (visible in `ps`: prefer stdin).
        #[arg(long)]
        password: Option<String>,
        /// Print the [auth] users entry with both keys (MD5 and SHA-256)
        /// instead of the MD5 key alone.
        #[arg(long)]
        toml: bool,
    },
    /// List the sessions of a running server (through its admin API).
    Sessions {
        #[command(flatten)]
        api: AdminArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close sessions of a running server (through its admin API).
    Kill {
        /// Close every session of this user.
        #[arg(
            long,
            required_unless_present = "relay_port",
            conflicts_with = "relay_port"
        )]
        user: Option<String>,
        /// Close the session on this relay port.
        #[arg(long, value_name = "PORT")]
        relay_port: Option<u16>,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Refuse a user name on every node (through the admin API).
    ///
    /// Its live allocations close at once, on every node of a cluster, and
    /// its Allocates and Refreshes get 401 until the revocation ends: how a
    /// leaked REST credential is stopped before its expiry. Without
    /// [cluster] a revocation lives in the server's memory (a restart
    /// forgets it); with [cluster] it is kept in Redis.
    Revoke {
        /// The static user name, or the REST name (the part after `<expiry>:`).
        #[arg(
            long,
            required_unless_present_any = ["list", "remove"],
            conflicts_with_all = ["list", "remove"]
        )]
        user: Option<String>,
        /// Until when: a duration (90s, 30m, 12h, 7d) or an RFC 3339 time (2026-12-24T18:00:00Z); default 24h, at most a year.
        #[arg(long, value_name = "TIME", requires = "user")]
        until: Option<String>,
        /// List the revocations in force.
        #[arg(long, conflicts_with = "remove")]
        list: bool,
        /// Lift this name's revocation.
        #[arg(long, value_name = "NAME")]
        remove: Option<String>,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Print a manual page (roff) on stdout, or write both into a directory.
    ///
    /// ferroturn(1) describes the commands, ferroturn.toml(5) every
    /// configuration key. `ferroturn man | man -l -` shows the first; a
    /// package installs the files --dir writes.
    Man {
        /// Which page: 1, the commands; 5, the configuration keys.
        #[arg(long, default_value = "1", value_parser = ["1", "5"], conflicts_with = "dir")]
        section: String,
        /// Write both pages into DIR, as ferroturn.1 and ferroturn.toml.5, instead.
        #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
        dir: Option<PathBuf>,
    },
    /// Print the completion script for bash, zsh or fish on stdout.
    ///
    /// bash: save it as /usr/share/bash-completion/completions/ferroturn;
    /// zsh: as _ferroturn in a directory of $fpath (e.g.
    /// /usr/share/zsh/vendor-completions); fish: as
    /// /usr/share/fish/vendor_completions.d/ferroturn.fish.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// The shells `ferroturn completions` writes for.
#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 90s, 30m, 24h or 7d"))?;
    Ok(Duration::from_secs(n * mult))
}

/// Load and validate `--config`, or say why not (and with which exit code).
fn load(path: Option<&PathBuf>, command: &str) -> Result<ferroturn::config::Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("ferroturn {command}: --config FILE is required (try --config config.toml)");
        return Err(ExitCode::from(2));
    };
    ferroturn::config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// `--config` when given (loaded and validated), else nothing.
fn optional_config(
    path: Option<&PathBuf>,
    command: &str,
) -> Result<Option<ferroturn::config::Config>, ExitCode> {
    path.map(|_| load(path, command)).transpose()
}

/// Where the admin API is and how to authenticate to it, from the flags,
/// else `--config`'s `[admin]`, else the defaults. A token given on the
/// command line works, with a warning: every local user can read it in
/// `ps`.
fn admin_target(
    path: Option<&PathBuf>,
    api: AdminArgs,
    command: &str,
) -> Result<ferroturn::admin::client::Target, ExitCode> {
    use ferroturn::admin::client::{TOKEN_ENV, Target, TokenSource};
    let config = optional_config(path, command)?;
    let AdminArgs {
        admin,
        token_file,
        token,
    } = api;
    let token = match (token_file, token) {
        (Some(f), _) => TokenSource::File(f),
        (None, Some(t)) => {
            warn_argv(
                command,
                "--token",
                &format!("--token-file FILE or ${TOKEN_ENV}"),
            );
            TokenSource::Arg(t)
        }
        (None, None) => TokenSource::None,
    };
    Target::resolve(admin.as_deref(), token, config.as_ref()).map_err(|e| {
        eprintln!("ferroturn {command}: {e}");
        ExitCode::from(2)
    })
}

/// Run a server (plain or with the demo) until it stops.
fn serve(
    path: Option<&PathBuf>,
    command: &str,
    run: fn(ferroturn::config::Config) -> std::io::Result<()>,
) -> ExitCode {
    let config = match load(path, command) {
        Ok(c) => c,
        Err(code) => return code,
    };
    ferroturn::log::init(&config.live.log_level, config.restart.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferroturn: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable `ferroturn credentials` takes the secret from.
const SECRET_ENV: &str = "FERROTURN_SECRET";

/// Say on stderr that a secret given as an argument is visible to others.
fn warn_argv(command: &str, flag: &str, instead: &str) {
    eprintln!(
        "ferroturn {command}: warning: {flag} is visible to every local user (ps, /proc); use {instead}"
    );
}

/// The REST secret for `ferroturn credentials`: --secret (with a warning),
/// --secret-file, $FERROTURN_SECRET, or the config's first secret.
fn rest_secret(
    secret: Option<String>,
    file: Option<PathBuf>,
    config: Option<&ferroturn::config::Config>,
) -> Result<String, String> {
    if let Some(s) = secret {
        warn_argv(
            "credentials",
            "--secret",
            &format!("--secret-file FILE or ${SECRET_ENV}"),
        );
        return Ok(s);
    }
    if let Some(f) = file {
        return ferroturn::config::secret_file("--secret-file", &f);
    }
    if let Some(v) = std::env::var_os(SECRET_ENV) {
        let v = v
            .into_string()
            .map_err(|_| format!("${SECRET_ENV}: not UTF-8"))?;
        return ferroturn::config::secret_text(&v, &format!("${SECRET_ENV}"));
    }
    config
        .and_then(|c| c.live.secrets.first().cloned())
        .ok_or_else(|| {
            format!("give --secret-file FILE, ${SECRET_ENV}, or --config with [auth] secrets")
        })
}

/// Read a password from stdin: one line, prompted for (twice, without
/// echo) when stdin is a terminal.
fn read_password(user: &str, realm: &str) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let read = || -> Result<String, String> {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let password = if stdin.is_terminal() {
        let _quiet = NoEcho::new();
        eprint!("Password for {user} in realm {realm}: ");
        let first = read()?;
        eprint!("Again: ");
        let again = read()?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    } else {
        read()?
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

/// Terminal echo off on stdin while it lives.
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return NoEcho(None);
            }
            let mut quiet = t;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            NoEcho(Some(t))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

/// `ferroturn password`: the keys of `user` for the realm of --realm or
/// --config, from a password read from stdin.
fn password(
    config: Option<&PathBuf>,
    user: &str,
    realm: Option<String>,
    password: Option<String>,
    toml: bool,
) -> ExitCode {
    use ferroturn::auth::{Key, key_hex};
    let realm = match (realm, config) {
        (Some(_), Some(_)) => {
            eprintln!("ferroturn password: give --realm or --config, not both");
            return ExitCode::from(2);
        }
        (Some(r), None) => r,
        (None, Some(_)) => match load(config, "password") {
            Ok(c) => c.restart.realm,
            Err(code) => return code,
        },
        (None, None) => {
            eprintln!(
                "ferroturn password: give --config FILE (its realm) or --realm REALM: keys depend on the realm"
            );
            return ExitCode::from(2);
        }
    };
    if user.is_empty() || realm.is_empty() {
        eprintln!("ferroturn password: the user and realm must not be empty");
        return ExitCode::from(2);
    }
    let password = match password {
        Some(p) => {
            warn_argv("password", "--password", "stdin or the prompt");
            p
        }
        None => match read_password(user, &realm) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("ferroturn password: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let md5 = key_hex(&Key::md5(user, &realm, &password));
    if toml {
        let sha256 = key_hex(&Key::sha256(user, &realm, &password));
        let bare = user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        // A quoted key otherwise, escaped by TOML's rules (JSON's leave
        // DEL raw, which TOML refuses).
        let name = if bare {
            user.to_owned()
        } else {
            toml::Value::String(user.to_owned()).to_string()
        };
        println!("{name} = {{ md5 = \"{md5}\", sha256 = \"{sha256}\" }}");
    } else {
        println!("{md5}");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(CliCommand::Run) {
        CliCommand::Man { section, dir } => man(&section, dir.as_ref()),
        CliCommand::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout();
            let generator = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(generator, &mut cmd, "ferroturn", &mut out);
            if let Shell::Fish = shell {
                print!("{}", fish_positionals(&cmd));
            }
            ExitCode::SUCCESS
        }
        CliCommand::Run => serve(cli.config.as_ref(), "run", ferroturn::daemon::run),
        CliCommand::Demo => serve(cli.config.as_ref(), "demo", ferroturn::demo::run),
        CliCommand::Check => match load(cli.config.as_ref(), "check") {
            Ok(_) => {
                println!("{}: ok", cli.config.as_ref().expect("loaded").display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        CliCommand::Credentials {
            secret,
            secret_file,
            user,
            ttl,
            json,
            urls,
        } => {
            let config = match optional_config(cli.config.as_ref(), "credentials") {
                Ok(c) => c,
                Err(code) => return code,
            };
            let secret = match rest_secret(secret, secret_file, config.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ferroturn credentials: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (username, password) =
                ferroturn::auth::rest_credentials(&secret, &user, now + ttl.as_secs());
            if json {
                let urls = if urls.is_empty() {
                    config
                        .as_ref()
                        .map(ferroturn::io::ice_urls)
                        .unwrap_or_default()
                } else {
                    urls
                };
                let list: Vec<String> = urls.iter().map(|u| json_string(u)).collect();
                println!(
                    "{{\"urls\": [{}], \"username\": {}, \"credential\": {}}}",
                    list.join(", "),
                    json_string(&username),
                    json_string(&password)
                );
            } else {
                println!("username: {username}");
                println!("password: {password}");
            }
            ExitCode::SUCCESS
        }
        CliCommand::Password {
            user,
            realm,
            password: given,
            toml,
        } => password(cli.config.as_ref(), &user, realm, given, toml),
        CliCommand::Sessions { api, json } => {
            use ferroturn::admin::client::table;
            let config = cli.config.as_ref();
            let target = match admin_target(config, api, "sessions") {
                Ok(t) => t,
                Err(code) => return code,
            };
            let shown = if json {
                target.sessions_json().map(|j| format!("{j}\n"))
            } else {
                target.sessions().map(|s| table(&s))
            };
            match shown {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferroturn sessions: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        CliCommand::Kill {
            user,
            relay_port,
            api,
        } => {
            let config = cli.config.as_ref();
            let target = match admin_target(config, api, "kill") {
                Ok(t) => t,
                Err(code) => return code,
            };
            let (closed, what) = match (&user, relay_port) {
                (Some(u), _) => (target.kill_user(u), format!("of user {u}")),
                (None, Some(p)) => (target.kill_relay_port(p), format!("on relay port {p}")),
                (None, None) => unreachable!("clap requires --user or --relay-port"),
            };
            match closed {
                Ok(n) => {
                    let s = if n == 1 { "" } else { "s" };
                    println!("closed {n} session{s} {what}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferroturn kill: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        CliCommand::Revoke {
            user,
            until,
            list,
            remove,
            api,
        } => revoke(cli.config.as_ref(), user, until, list, remove, api),
    }
}

/// `ferroturn revoke`: add, list or remove revocations.
fn revoke(
    config: Option<&PathBuf>,
    user: Option<String>,
    until: Option<String>,
    list: bool,
    remove: Option<String>,
    api: AdminArgs,
) -> ExitCode {
    use ferroturn::admin::client::{DEFAULT_REVOCATION_SECS, parse_until};
    let target = match admin_target(config, api, "revoke") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let done = if list {
        target.revocations().map(|l| {
            if l.is_empty() {
                return "no revocations\n".to_owned();
            }
            l.iter()
                .map(|r| {
                    format!(
                        "{}  until {} ({}s from now)\n",
                        r.name,
                        r.until,
                        r.until.saturating_sub(now)
                    )
                })
                .collect()
        })
    } else if let Some(name) = remove {
        target.unrevoke(&name).map(|removed| match removed {
            true => format!("revocation of {name} removed\n"),
            false => format!(
                "{name} was not revoked on this node (removed on the others if they had it)\n"
            ),
        })
    } else {
        let name = user.expect("clap requires --user, --list or --remove");
        let until = match until {
            Some(t) => match parse_until(&t, now) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("ferroturn revoke: {e}");
                    return ExitCode::from(2);
                }
            },
            None => now + DEFAULT_REVOCATION_SECS,
        };
        target.revoke(&name, until).map(|r| {
            let s = if r.closed == 1 { "" } else { "s" };
            format!(
                "{} revoked until {} ({}s from now); closed {} session{s} here\n",
                r.name,
                r.until,
                r.until.saturating_sub(now),
                r.closed
            )
        })
    };
    match done {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferroturn revoke: {e}");
            ExitCode::FAILURE
        }
    }
}

/// roff lines that clap_mangen rendered, without the string definitions
/// (`.ie`/`.el`) each of its calls starts with, and without `.SH`
/// headings when `heading` is false (a subcommand's part of COMMANDS).
fn mangen_lines(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, heading: bool) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("writing to a Vec");
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| !l.starts_with(".ie \\n(.g ") && !l.starts_with(".el .ds Aq "))
        .filter(|l| heading || !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The manual page ferroturn(1): the global options, then every command
/// with its synopsis, description and options (one page, so that `man
/// ferroturn` shows all of it), then what the commands share.
fn man_page_1() -> String {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut cmd = Cli::command();
    cmd.build();
    let version = env!("CARGO_PKG_VERSION");
    let root = clap_mangen::Man::new(cmd.clone());
    let mut title = Roff::new();
    title.control(
        "TH",
        [
            "FERROTURN",
            "1",
            "\"\"",
            &format!("ferroturn {version}"),
            "User Commands",
        ],
    );
    // Neither hyphenate nor stretch: options and paths stay whole.
    title.control("nh", []).control("ad", ["l"]);
    let mut page = title.render();
    page += &mangen_lines(|w| root.render_name_section(w), true);
    page += &mangen_lines(|w| root.render_synopsis_section(w), true);
    page += &mangen_lines(|w| root.render_description_section(w), true);
    page += &mangen_lines(|w| root.render_options_section(w), true);
    page += ".SH COMMANDS\n";
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let man = clap_mangen::Man::new(sub.clone());
        let mut heading = Roff::new();
        heading.control("SS", [format!("ferroturn {}", sub.get_name()).as_str()]);
        page += &mangen_lines(|w| heading.to_writer(w), false);
        page += &mangen_lines(|w| man.render_synopsis_section(w), false);
        page += ".PP\n";
        page += &mangen_lines(|w| man.render_description_section(w), false);
        page += &mangen_lines(|w| man.render_options_section(w), false);
    }
    let mut r = Roff::new();
    let entries = |r: &mut Roff, title: &str, items: &[(&str, &str)]| {
        r.control("SH", [title]);
        for (term, text) in items {
            r.control("TP", []);
            r.text([bold(*term)]);
            r.text([roman(*text)]);
        }
    };
    entries(
        &mut r,
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Reload: read the configuration file again and apply it without dropping a session (secrets, users, peers, limits, log level, TLS certificates, admin token); an invalid file is refused and the running configuration stays.",
            ),
            (
                "SIGTERM",
                "Drain: refuse new allocations, let existing ones run until they end or [server] drain_timeout passes, then exit. A second SIGTERM stops at once.",
            ),
            ("SIGINT", "Stop at once, closing every allocation."),
        ],
    );
    entries(
        &mut r,
        "ENVIRONMENT",
        &[
            (
                SECRET_ENV,
                "The shared secret for ferroturn credentials, when neither --secret-file nor --secret is given.",
            ),
            (
                ferroturn::admin::client::TOKEN_ENV,
                "The admin API's bearer token for ferroturn sessions and ferroturn kill, when neither --token-file nor --token is given.",
            ),
            (
                "RUST_LOG",
                "Overrides [log] level (also on reload), e.g. ferroturn=debug.",
            ),
        ],
    );
    entries(
        &mut r,
        "FILES",
        &[
            (
                "/etc/ferroturn/config.toml",
                "The configuration file of the systemd unit; see ferroturn.toml(5).",
            ),
            (
                ferroturn::config::DEFAULT_ADMIN_SOCKET,
                "The admin API's Unix socket, where sessions and kill look by default.",
            ),
        ],
    );
    entries(
        &mut r,
        "EXIT STATUS",
        &[
            ("0", "Success."),
            (
                "1",
                "The configuration is invalid (FILE: KEY: REASON on stderr), the server failed, or the admin API could not be reached or refused the request.",
            ),
            ("2", "Wrong or missing arguments."),
        ],
    );
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("ferroturn.toml"),
        roman("(5), "),
        bold("systemctl"),
        roman("(1)"),
    ]);
    page += &mangen_lines(|w| r.to_writer(w), true);
    page += &mangen_lines(|w| root.render_version_section(w), true);
    page
}

/// The fish lines clap_complete leaves out (clap-rs/clap#6295: its fish
/// script completes options only): the closed list of values of each
/// subcommand's positional argument, so that `ferroturn completions <Tab>`
/// offers the shells rather than file names. The condition is the helper
/// function clap_complete's script defines.
fn fish_positionals(cmd: &clap::Command) -> String {
    let mut lines = String::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() {
                lines += &format!(
                    "complete -c ferroturn -n \"__fish_ferroturn_using_subcommand {}\" -f -a \"{}\"\n",
                    sub.get_name(),
                    values.join(" ")
                );
            }
        }
    }
    lines
}

/// `ferroturn man`: one page to stdout, or both into `dir`.
fn man(section: &str, dir: Option<&PathBuf>) -> ExitCode {
    let page_5 = || ferroturn::config_keys::man_page(env!("CARGO_PKG_VERSION"));
    let Some(dir) = dir else {
        print!(
            "{}",
            if section == "5" {
                page_5()
            } else {
                man_page_1()
            }
        );
        return ExitCode::SUCCESS;
    };
    for (name, text) in [
        ("ferroturn.1", man_page_1()),
        ("ferroturn.toml.5", page_5()),
    ] {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("ferroturn man: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
