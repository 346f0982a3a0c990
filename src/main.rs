//! The `ferroturn` command: run the server, check a config, mint credentials.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferroturn",
    version,
    about = "A STUN/TURN server (RFC 8489, RFC 8656)"
)]
struct Cli {
    /// Configuration file (TOML); runs the server when no command is given.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Run the server plus the signaling demo's web pages ([demo] address).
    Demo,
    /// Validate a configuration file: exit 0, or print FILE: KEY: REASON and exit 1.
    Check,
    /// Print TURN REST API credentials (coturn use-auth-secret / eturnal scheme).
    Credentials {
        /// Shared secret; defaults to the first of [auth] secrets in --config.
        #[arg(long)]
        secret: Option<String>,
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
    /// List the sessions of a running server (through its admin API).
    Sessions {
        /// Admin API: IP:PORT or a socket path; defaults to [admin] in --config, else /run/ferroturn/admin.sock.
        #[arg(long, value_name = "ADDR|SOCKET")]
        admin: Option<String>,
        /// File holding the bearer token; defaults to $FERROTURN_ADMIN_TOKEN, else [admin] token in --config.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// Bearer token (visible to other users in ps: prefer --token-file).
        #[arg(long)]
        token: Option<String>,
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
        /// Admin API: IP:PORT or a socket path; defaults to [admin] in --config, else /run/ferroturn/admin.sock.
        #[arg(long, value_name = "ADDR|SOCKET")]
        admin: Option<String>,
        /// File holding the bearer token; defaults to $FERROTURN_ADMIN_TOKEN, else [admin] token in --config.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// Bearer token (visible to other users in ps: prefer --token-file).
        #[arg(long)]
        token: Option<String>,
    },
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
    admin: Option<String>,
    token_file: Option<PathBuf>,
    token: Option<String>,
    command: &str,
) -> Result<ferroturn::admin::client::Target, ExitCode> {
    use ferroturn::admin::client::{TOKEN_ENV, Target, TokenSource};
    let config = optional_config(path, command)?;
    let token = match (token_file, token) {
        (Some(f), _) => TokenSource::File(f),
        (None, Some(t)) => {
            eprintln!(
                "ferroturn {command}: warning: --token is visible to every local user (ps, /proc); use --token-file FILE or ${TOKEN_ENV}"
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
    ferroturn::log::init(&config.log_level, config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferroturn: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(cli.config.as_ref(), "run", ferroturn::daemon::run),
        Command::Demo => serve(cli.config.as_ref(), "demo", ferroturn::demo::run),
        Command::Check => match load(cli.config.as_ref(), "check") {
            Ok(_) => {
                println!("{}: ok", cli.config.as_ref().expect("loaded").display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Credentials {
            secret,
            user,
            ttl,
            json,
            urls,
        } => {
            let config = match optional_config(cli.config.as_ref(), "credentials") {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(secret) = secret.or_else(|| config.as_ref()?.secrets.first().cloned()) else {
                eprintln!("ferroturn credentials: give --secret, or --config with [auth] secrets");
                return ExitCode::from(2);
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
        Command::Sessions {
            admin,
            token_file,
            token,
            json,
        } => {
            use ferroturn::admin::client::table;
            let config = cli.config.as_ref();
            let target = match admin_target(config, admin, token_file, token, "sessions") {
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
        Command::Kill {
            user,
            relay_port,
            admin,
            token_file,
            token,
        } => {
            let config = cli.config.as_ref();
            let target = match admin_target(config, admin, token_file, token, "kill") {
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
    }
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
