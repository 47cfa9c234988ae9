//! The `ssed` binary: flags (and their environment variables) to a validated [`Config`], a logger, run.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ssed::{systemd, Config, Fsync, Server};

/// One flag: its name, what its value looks like, what it means, and the [`Config`] field it sets.
///
/// Everything else is derived from these, so nothing can drift apart: the environment variable from
/// the name ([`Flag::env`]), the default `--help` shows from [`Config::default`] through the field
/// ([`Flag::default_shown`]), and the parsing and its range from the field's [`Setting`].
struct Flag {
    name: &'static str,
    value: &'static str,
    help: &'static str,
    setting: Setting,
}

/// The [`Config`] field a flag sets and how its value is read. The field is reached through an
/// accessor, the same one for setting it and for reading its default.
#[derive(Clone, Copy)]
enum Setting {
    /// A whole number from `min` to `max`.
    Count { field: fn(&mut Config) -> &mut usize, min: u64, max: u64 },
    /// A number of bytes from `min` to `max`, optionally with a binary unit (see [`parse_size`]).
    Bytes { field: fn(&mut Config) -> &mut usize, min: u64, max: u64 },
    /// Whole seconds from `min` to `max`.
    Secs { field: fn(&mut Config) -> &mut Duration, min: u64, max: u64 },
    /// Whole milliseconds from `min` to `max`.
    Millis { field: fn(&mut Config) -> &mut Duration, min: u64, max: u64 },
    /// A socket address.
    Addr(fn(&mut Config) -> &mut SocketAddr),
    /// A socket address that may be unset.
    OptAddr(fn(&mut Config) -> &mut Option<SocketAddr>),
    /// Text taken as written (a token).
    Text(fn(&mut Config) -> &mut Option<String>),
    /// A path.
    Path(fn(&mut Config) -> &mut Option<PathBuf>),
    /// A list: each flag adds one item; the variable holds a comma-separated list, which the flags
    /// replace.
    List(fn(&mut Config) -> &mut Vec<String>),
    /// The durable history's sync policy: `always`, `batch` or `never`.
    Fsync(fn(&mut Config) -> &mut Fsync),
    /// Text that always has a value (a name).
    Name(fn(&mut Config) -> &mut String),
    /// A switch: the flag takes no value; its variable is `1`/`true`/`yes` or `0`/`false`/`no`.
    Switch(fn(&mut Config) -> &mut bool),
}

const DAY_SECS: u64 = ssed::TIMEOUT_CEILING.as_secs();
const YEAR_SECS: u64 = ssed::AGE_CEILING.as_secs();

const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: "ADDR",
        help: "address to bind (ignored under systemd socket activation)",
        setting: Setting::Addr(|c| &mut c.listen),
    },
    Flag {
        name: "history",
        value: "N",
        help: "events kept for resume",
        setting: Setting::Count { field: |c| &mut c.history, min: 1, max: ssed::HISTORY_CEILING as u64 },
    },
    Flag {
        name: "history-bytes",
        value: "BYTES",
        help: "cap on the bytes those events hold; the oldest are dropped first; at least twice --max-body",
        setting: Setting::Bytes { field: |c| &mut c.history_bytes, min: 1, max: ssed::BYTES_CEILING },
    },
    Flag {
        name: "heartbeat",
        value: "SECS",
        help: "comment line after this long without bytes on a stream; 0 disables",
        setting: Setting::Secs { field: |c| &mut c.heartbeat, min: 0, max: DAY_SECS },
    },
    Flag {
        name: "retry-ms",
        value: "MS",
        help: "retry: sent at the start of each stream",
        setting: Setting::Millis {
            field: |c| &mut c.retry,
            min: 0,
            max: ssed::RETRY_CEILING.as_millis() as u64,
        },
    },
    Flag {
        name: "max-connections",
        value: "N",
        help: "connections held open (capped by the open-file limit)",
        setting: Setting::Count {
            field: |c| &mut c.max_connections,
            min: 1,
            max: ssed::CONNECTIONS_CEILING as u64,
        },
    },
    Flag {
        name: "max-body",
        value: "BYTES",
        help: "larger publish bodies get 413",
        setting: Setting::Bytes { field: |c| &mut c.max_body, min: 1, max: ssed::BODY_CEILING as u64 },
    },
    Flag {
        name: "max-lag",
        value: "BYTES",
        help: "a subscriber this far behind is disconnected; at least twice --max-body",
        setting: Setting::Bytes { field: |c| &mut c.max_lag, min: 1, max: ssed::BYTES_CEILING },
    },
    Flag {
        name: "header-timeout",
        value: "SECS",
        help: "a request (head and body) not complete this long after its first byte gets 408",
        setting: Setting::Secs { field: |c| &mut c.header_timeout, min: 1, max: DAY_SECS },
    },
    Flag {
        name: "keep-alive-timeout",
        value: "SECS",
        help: "an idle keep-alive connection is closed after this long",
        setting: Setting::Secs { field: |c| &mut c.keep_alive_timeout, min: 1, max: DAY_SECS },
    },
    Flag {
        name: "publish-token",
        value: "TOKEN",
        help: "publishing needs Authorization: Bearer TOKEN",
        setting: Setting::Text(|c| &mut c.publish_token),
    },
    Flag {
        name: "subscribe-token",
        value: "TOKEN",
        help: "subscribing needs that bearer token or cookie ssed_token=TOKEN",
        setting: Setting::Text(|c| &mut c.subscribe_token),
    },
    Flag {
        name: "cors-origin",
        value: "ORIGIN",
        help: "allow this origin, scheme://host[:port] as a browser sends it, or *; repeatable \
               (the variable takes a comma-separated list, which the flags replace)",
        setting: Setting::List(|c| &mut c.cors_origins),
    },
    Flag {
        name: "max-lifetime",
        value: "SECS",
        help: "end each stream after this long, +-20% at random; 0 disables",
        setting: Setting::Secs { field: |c| &mut c.max_lifetime, min: 0, max: YEAR_SECS },
    },
    Flag {
        name: "shutdown-timeout",
        value: "SECS",
        help: "how long a graceful shutdown waits for buffered bytes",
        setting: Setting::Secs { field: |c| &mut c.shutdown_timeout, min: 0, max: DAY_SECS },
    },
    Flag {
        name: "data-dir",
        value: "DIR",
        help: "keep the history in segment files here so it survives restarts and crashes",
        setting: Setting::Path(|c| &mut c.data_dir),
    },
    Flag {
        name: "fsync",
        value: "MODE",
        help: "only with --data-dir (refused without it): always (sync each event), batch (one sync per \
               loop turn), never",
        setting: Setting::Fsync(|c| &mut c.fsync),
    },
    Flag {
        name: "history-age",
        value: "SECS",
        help: "events older than this leave the history (memory and disk); 0 keeps them",
        setting: Setting::Secs { field: |c| &mut c.history_age, min: 0, max: YEAR_SECS },
    },
    Flag {
        name: "redis",
        value: "URL",
        help: "cluster mode: share one log with every node on this Redis, e.g. redis://127.0.0.1:6379/0 \
               (not with --data-dir)",
        setting: Setting::Text(|c| &mut c.redis),
    },
    Flag {
        name: "redis-key",
        value: "KEY",
        help: "the Redis stream the nodes share",
        setting: Setting::Name(|c| &mut c.redis_key),
    },
    Flag {
        name: "redis-maxlen",
        value: "N",
        help: "about how many events Redis keeps (XADD MAXLEN ~); 0 means --history",
        setting: Setting::Count { field: |c| &mut c.redis_maxlen, min: 0, max: ssed::HISTORY_CEILING as u64 },
    },
    Flag {
        name: "reuse-port",
        value: "",
        help: "let several processes share the port (SO_REUSEPORT), one per core; needs --redis",
        setting: Setting::Switch(|c| &mut c.reuse_port),
    },
    Flag {
        name: "jwt-key",
        value: "KEY",
        help: "JWT key for publishers and subscribers: the secret (HS*), else a public key's PEM or its \
               file; turns per-topic rights on, for /events too",
        setting: Setting::Text(|c| &mut c.jwt_key),
    },
    Flag {
        name: "jwt-alg",
        value: "ALG",
        help: "the algorithm of --jwt-key: HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA",
        setting: Setting::Name(|c| &mut c.jwt_alg),
    },
    Flag {
        name: "publisher-jwt-key",
        value: "KEY",
        help: "a JWT key for publishers only (as --jwt-key)",
        setting: Setting::Text(|c| &mut c.publisher_jwt_key),
    },
    Flag {
        name: "publisher-jwt-alg",
        value: "ALG",
        help: "the algorithm of --publisher-jwt-key",
        setting: Setting::Name(|c| &mut c.publisher_jwt_alg),
    },
    Flag {
        name: "subscriber-jwt-key",
        value: "KEY",
        help: "a JWT key for subscribers only (as --jwt-key)",
        setting: Setting::Text(|c| &mut c.subscriber_jwt_key),
    },
    Flag {
        name: "subscriber-jwt-alg",
        value: "ALG",
        help: "the algorithm of --subscriber-jwt-key",
        setting: Setting::Name(|c| &mut c.subscriber_jwt_alg),
    },
    Flag {
        name: "jwt-issuer",
        value: "ISS",
        help: "an iss a current-revision token may carry (repeat for several; none: https://localhost)",
        setting: Setting::List(|c| &mut c.jwt_issuers),
    },
    Flag {
        name: "jwt-audience",
        value: "AUD",
        help: "an aud accepted (repeat for several; none: the hub's URL under the request's Host)",
        setting: Setting::List(|c| &mut c.jwt_audiences),
    },
    Flag {
        name: "hub-url",
        value: "URL",
        help: "the Mercure hub's public URL: relative topics resolve against it, its path is reserved",
        setting: Setting::Name(|c| &mut c.hub_url),
    },
    Flag {
        name: "deny-anonymous",
        value: "",
        help: "refuse subscribers without a token (by default they get public updates only)",
        setting: Setting::Switch(|c| &mut c.deny_anonymous),
    },
    Flag {
        name: "no-legacy-tokens",
        value: "",
        help: "refuse pre-standardization Mercure tokens (the `mercure` claim)",
        setting: Setting::Switch(|c| &mut c.no_legacy_tokens),
    },
    Flag {
        name: "legacy-query-token",
        value: "",
        help: "accept a token in the `authorization` query parameter, as older Mercure hubs did",
        setting: Setting::Switch(|c| &mut c.legacy_query_token),
    },
    Flag {
        name: "jwt-cookie",
        value: "NAME",
        help: "another cookie to take a token from (besides __Secure-mercure_access_token, mercureAuthorization)",
        setting: Setting::Text(|c| &mut c.jwt_cookie),
    },
    Flag {
        name: "publish-origin",
        value: "ORIGIN",
        help: "an origin whose pages may publish with a cookie token (repeat for several)",
        setting: Setting::List(|c| &mut c.publish_origins),
    },
    Flag {
        name: "tls-cert",
        value: "FILE",
        help: "serve TLS with this PEM certificate chain (leaf first), on --listen or on --tls-listen; \
               read again on SIGHUP (systemctl reload)",
        setting: Setting::Path(|c| &mut c.tls_cert),
    },
    Flag {
        name: "tls-key",
        value: "FILE",
        help: "the certificate's PEM private key (PKCS#8, RSA or EC)",
        setting: Setting::Path(|c| &mut c.tls_key),
    },
    Flag {
        name: "tls-listen",
        value: "ADDR",
        help:
            "serve TLS on this address too, --listen staying plain (under systemd: the socket named ssed-tls)",
        setting: Setting::OptAddr(|c| &mut c.tls_listen),
    },
];

impl Flag {
    /// The environment variable: `SSED_` and the name in capitals with `_` for `-`
    /// (`--max-body` is `SSED_MAX_BODY`).
    fn env(&self) -> String {
        format!("SSED_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }

    /// The range of a numeric flag, `min` to `max`, and whether its value may carry a unit.
    fn range(&self) -> Option<(u64, u64, bool)> {
        match self.setting {
            Setting::Count { min, max, .. }
            | Setting::Secs { min, max, .. }
            | Setting::Millis { min, max, .. } => Some((min, max, false)),
            Setting::Bytes { min, max, .. } => Some((min, max, true)),
            Setting::Addr(_)
            | Setting::OptAddr(_)
            | Setting::Text(_)
            | Setting::Path(_)
            | Setting::List(_)
            | Setting::Fsync(_)
            | Setting::Name(_)
            | Setting::Switch(_) => None,
        }
    }

    /// The default `--help` shows: the field's value in [`Config::default`], written the way the flag
    /// takes it (sizes in their largest exact unit), or `unset`.
    fn default_shown(&self) -> String {
        let mut config = Config::default();
        let config = &mut config;
        let unset = || "unset".to_string();
        match self.setting {
            Setting::Count { field, .. } => field(config).to_string(),
            Setting::Bytes { field, .. } => show_size(*field(config) as u64),
            Setting::Secs { field, .. } => field(config).as_secs().to_string(),
            Setting::Millis { field, .. } => field(config).as_millis().to_string(),
            Setting::Addr(field) => field(config).to_string(),
            Setting::OptAddr(field) => field(config).map_or_else(unset, |a| a.to_string()),
            Setting::Text(field) => field(config).clone().unwrap_or_else(unset),
            Setting::Path(field) => field(config).as_ref().map_or_else(unset, |p| p.display().to_string()),
            Setting::List(field) if field(config).is_empty() => unset(),
            Setting::List(field) => field(config).join(","),
            Setting::Fsync(field) => field(config).to_string(),
            Setting::Name(field) => field(config).clone(),
            Setting::Switch(field) => if *field(config) { "on" } else { "off" }.to_string(),
        }
    }
}

fn help() -> String {
    let mut text = String::from(
        "ssed: a Server-Sent Events broadcast server\n\n\
         Usage: ssed [OPTIONS]\n\n\
         Every option can also be set through the environment variable shown; a flag wins over its\n\
         variable, and an empty variable counts as unset. Repeated --cors-origin flags replace the\n\
         variable's list. BYTES take an optional unit: K, M, G or T, all powers of 1024 however\n\
         written (64MiB = 64M = 64mb = 67108864). Numbers outside the range shown are refused; in\n\
         seconds, 86400 is a day and 31536000 a year.\n\n\
         Options:\n",
    );
    for flag in FLAGS {
        let left = format!("  --{} {}", flag.name, flag.value);
        let range = match flag.range() {
            None => String::new(),
            Some((min, max, false)) => format!(" [range: {min}-{max}]"),
            Some((min, max, true)) => format!(" [range: {}-{}]", show_size(min), show_size(max)),
        };
        text.push_str(&format!(
            "{left:<34}{}{range} [default: {}] [env: {}]\n",
            flag.help,
            flag.default_shown(),
            flag.env()
        ));
    }
    text.push_str("  -h, --help                      print this help\n  -V, --version                   print the version\n");
    text.push_str("\nLogging: RUST_LOG=debug (or info, warn, ...); default info.\n");
    text
}

/// What the command line asked for.
enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Why a number could not be taken.
#[derive(Debug, PartialEq, Eq)]
enum BadNumber {
    /// A whole number (perhaps negative, perhaps with a unit) that does not fit the range.
    OutOfRange,
    /// Not a whole number (with a known unit) at all.
    Malformed,
}

/// Units a size may carry: each a power of 1024, whatever the spelling, as systemd reads sizes.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tb", 1 << 40),
    ("tib", 1 << 40),
];

/// Reads a whole number of bytes with an optional unit (`64MiB`, `256K`, `1 g`, `65536`); units
/// are case-insensitive and all binary. With `units` false only a bare whole number is taken.
fn parse_size(text: &str, units: bool) -> Result<u64, BadNumber> {
    let text = text.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(BadNumber::Malformed);
    }
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start().to_ascii_lowercase();
    let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(BadNumber::Malformed);
    };
    if !units && !unit.is_empty() {
        return Err(BadNumber::Malformed);
    }
    if negative && number.bytes().any(|b| b != b'0') {
        return Err(BadNumber::OutOfRange);
    }
    // Only digits are left, so a parse failure means too many of them.
    let number: u64 = number.parse().map_err(|_| BadNumber::OutOfRange)?;
    number.checked_mul(scale).ok_or(BadNumber::OutOfRange)
}

/// A byte count as `--help` shows it: in the largest unit that divides it exactly.
fn show_size(bytes: u64) -> String {
    for (unit, scale) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// Reads a numeric flag's value and checks it against the flag's range.
fn number(flag: &Flag, text: &str) -> Result<u64, String> {
    let Some((min, max, units)) = flag.range() else {
        return Err(format!("--{} does not take a number", flag.name));
    };
    let (parsed, what, range) = if units {
        let range = format!("{min} to {max} ({} to {})", show_size(min), show_size(max));
        (parse_size(text, true), "a whole number of bytes, optionally with K, M, G or T", range)
    } else {
        (parse_size(text, false), "a whole number", format!("{min} to {max}"))
    };
    match parsed {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        Ok(_) | Err(BadNumber::OutOfRange) => {
            Err(format!("--{}: {text:?} is out of range: {range}", flag.name))
        }
        Err(BadNumber::Malformed) => Err(format!("--{}: {text:?} is not {what} ({range})", flag.name)),
    }
}

/// Sets the flag's field from one value (one flag, or the variable when the flag is absent).
fn apply(config: &mut Config, flag: &Flag, value: &str) -> Result<(), String> {
    let count = |v: &str| {
        let n = number(flag, v)?;
        usize::try_from(n)
            .map_err(|_| format!("--{}: {v:?} is more than this machine can address", flag.name))
    };
    match flag.setting {
        Setting::Count { field, .. } | Setting::Bytes { field, .. } => *field(config) = count(value)?,
        Setting::Secs { field, .. } => *field(config) = Duration::from_secs(number(flag, value)?),
        Setting::Millis { field, .. } => *field(config) = Duration::from_millis(number(flag, value)?),
        Setting::Addr(field) => {
            *field(config) = value.trim().parse().map_err(|_| {
                format!("--{}: {value:?} is not an address like {}", flag.name, flag.default_shown())
            })?
        }
        Setting::OptAddr(field) => {
            *field(config) = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| format!("--{}: {value:?} is not an address like 0.0.0.0:8443", flag.name))?,
            )
        }
        Setting::Text(field) => *field(config) = Some(value.to_string()),
        Setting::Path(field) => *field(config) = Some(value.into()),
        Setting::List(field) => field(config).push(value.to_string()),
        Setting::Fsync(field) => {
            *field(config) = value.trim().parse().map_err(|e: ssed::Error| e.to_string())?
        }
        Setting::Name(field) => *field(config) = value.to_string(),
        Setting::Switch(field) => {
            *field(config) = match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(format!("--{}: {value:?} is not 1/true/yes or 0/false/no", flag.name)),
            }
        }
    }
    Ok(())
}

/// Turns the command line and the environment into a [`Command`].
///
/// The command line is read first and whole: `--help` and `--version` then answer whatever the
/// environment holds, and a variable is only read (and so only refused) when its flag is absent,
/// since the flag would override it. An empty or blank variable counts as unset: that is what an
/// `EnvironmentFile=` line like `SSED_HISTORY=` means.
fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Command, String> {
    let mut given: Vec<(&'static Flag, String)> = Vec::new();
    let mut problem = None;
    let mut parser = lexopt::Parser::from_args(args);
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(e) => {
                problem.get_or_insert(e.to_string());
                break;
            }
        };
        match arg {
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => return Ok(Command::Help),
            lexopt::Arg::Short('V') | lexopt::Arg::Long("version") => return Ok(Command::Version),
            lexopt::Arg::Long(name) => {
                let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
                    problem.get_or_insert(format!("unknown option --{name} (see --help)"));
                    continue;
                };
                if let Setting::Switch(_) = flag.setting {
                    given.push((flag, "1".into()));
                    continue;
                }
                match parser.value() {
                    Ok(value) => match value.into_string() {
                        Ok(value) => given.push((flag, value)),
                        Err(_) => {
                            problem.get_or_insert(format!("--{}: value is not UTF-8", flag.name));
                        }
                    },
                    Err(e) => {
                        problem.get_or_insert(e.to_string());
                        break;
                    }
                }
            }
            other => {
                problem.get_or_insert(other.unexpected().to_string());
            }
        }
    }
    if let Some(problem) = problem {
        return Err(problem);
    }
    let mut config = Config::default();
    let mut fsync_from = None;
    for flag in FLAGS {
        if given.iter().any(|(f, _)| f.name == flag.name) {
            continue; // the flag wins; repeated --cors-origin flags replace the variable's list
        }
        let name = flag.env();
        let Some(value) = env(&name) else { continue };
        let value = value.into_string().map_err(|_| format!("{name}: value is not UTF-8"))?;
        if value.trim().is_empty() {
            continue;
        }
        if let Setting::List(field) = flag.setting {
            field(&mut config)
                .extend(value.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from));
        } else {
            apply(&mut config, flag, &value).map_err(|e| format!("{e} (from {name})"))?;
        }
        if let Setting::Fsync(_) = flag.setting {
            fsync_from = Some(name);
        }
    }
    for (flag, value) in &given {
        apply(&mut config, flag, value)?;
        if let Setting::Fsync(_) = flag.setting {
            fsync_from = Some(format!("--fsync {value}"));
        }
    }
    if let (Some(from), None) = (fsync_from, &config.data_dir) {
        // Refused rather than ignored: whoever asks for a sync policy believes events reach a disk,
        // and without --data-dir they live in memory only and a restart loses them.
        return Err(format!(
            "--fsync applies only with --data-dir (set by {from}); without a data directory the history \
             is kept in memory only. Set --data-dir DIR (SSED_DATA_DIR) or leave --fsync unset"
        ));
    }
    Ok(Command::Run(Box::new(config)))
}

fn run() -> Result<(), String> {
    let config = match parse_args(std::env::args_os().skip(1), |name| std::env::var_os(name))? {
        Command::Help => {
            print!("{}", help());
            return Ok(());
        }
        Command::Version => {
            println!("ssed {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Command::Run(config) => *config,
    };
    match ssed::raise_descriptor_limit() {
        Ok((before, after)) if after > before => {
            log::info!("open-file limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => log::warn!("could not raise the open-file limit: {e}"),
    }
    let server = match systemd::take_listeners().map_err(|e| e.to_string())? {
        Some(inherited) => {
            let tls_socket = inherited.tls.is_some();
            let server =
                Server::from_listeners(config, inherited.main, inherited.tls).map_err(|e| e.to_string())?;
            log::info!(
                "serving on the socket{} passed by systemd ({}{}); --listen{} ignored",
                if tls_socket { "s" } else { "" },
                server.local_addr(),
                server
                    .tls_local_addr()
                    .filter(|_| tls_socket)
                    .map(|a| format!(", TLS on {a}"))
                    .unwrap_or_default(),
                if tls_socket { " and --tls-listen are" } else { " is" },
            );
            server
        }
        None => Server::bind(config).map_err(|e| e.to_string())?,
    };
    let server = match systemd::Notifier::from_env().map_err(|e| e.to_string())? {
        Some(notifier) => server.with_notifier(notifier),
        None => server,
    };
    watch_signals(server.shutdown_handle(), server.reload_handle())?;
    server.run().map_err(|e| e.to_string())
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once. SIGHUP (`systemctl
/// reload`) reads the TLS certificate and key again; a file that does not load is logged and the
/// certificate in use kept.
///
/// A thread that only waits for signals keeps the library free of process-wide signal state; the
/// event loop still does all the serving.
fn watch_signals(shutdown: ssed::Shutdown, reload: ssed::Reload) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("ssed-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match reload.reload() {
                        Ok(true) => log::info!("SIGHUP: TLS certificate and key read again"),
                        Ok(false) => log::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                        Err(e) => log::error!("SIGHUP: reload failed, the certificate in use is kept: {e}"),
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    log::info!("signal {signal}: shutting down gracefully (send it again to exit at once)");
                    shutdown.shutdown();
                } else {
                    log::warn!("signal {signal} again: exiting at once");
                    std::process::exit(128 + signal);
                }
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(())
}

/// Logs to stderr: the usual format on a terminal; under journald (`JOURNAL_STREAM` set), each line
/// starts with its syslog priority (`<3>` error … `<7>` debug) and carries no timestamp of its own, so
/// `journalctl -p warning` filters correctly. `RUST_LOG` chooses the level either way.
fn init_logging() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| {
            use std::io::Write as _;
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}: {}", record.target(), record.args())
        });
    }
    builder.init();
}

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ssed: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, OsString)> =
            env.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match parse_args(args.iter().map(OsString::from), lookup)? {
            Command::Run(config) => Ok(*config),
            Command::Help => Err("help".into()),
            Command::Version => Err("version".into()),
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        use BadNumber::*;
        let cases: &[(&str, Result<u64, BadNumber>)] = &[
            ("0", Ok(0)),
            ("65536", Ok(65536)),
            (" 65536 ", Ok(65536)),
            ("+7", Ok(7)),
            ("1K", Ok(1024)),
            ("1k", Ok(1024)),
            ("1KiB", Ok(1024)),
            ("64kB", Ok(65536)),
            ("256KiB", Ok(262_144)),
            ("1M", Ok(1 << 20)),
            ("64MiB", Ok(64 << 20)),
            ("64 MiB", Ok(64 << 20)),
            ("64mib", Ok(64 << 20)),
            ("2G", Ok(2 << 30)),
            ("1GB", Ok(1 << 30)),
            ("1TiB", Ok(1 << 40)),
            ("12B", Ok(12)),
            ("-0", Ok(0)),
            ("-5", Err(OutOfRange)),
            ("-5M", Err(OutOfRange)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551616", Err(OutOfRange)),
            ("99999999999999999999999", Err(OutOfRange)),
            ("16777216T", Err(OutOfRange)),
            ("16777215T", Ok(16_777_215 << 40)),
            ("", Err(Malformed)),
            ("M", Err(Malformed)),
            ("1.5M", Err(Malformed)),
            ("1 000", Err(Malformed)),
            ("1MM", Err(Malformed)),
            ("1P", Err(Malformed)),
            ("0x10", Err(Malformed)),
            ("ten", Err(Malformed)),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_size(text, true), expected, "{text:?}");
        }
        assert_eq!(parse_size("1K", false), Err(Malformed), "plain numbers take no unit");
        assert_eq!(parse_size("42", false), Ok(42));
    }

    #[test]
    fn sizes_are_shown_in_the_largest_exact_unit() {
        assert_eq!(show_size(1), "1");
        assert_eq!(show_size(1536), "1536");
        assert_eq!(show_size(65536), "64KiB");
        assert_eq!(show_size(1 << 30), "1GiB");
        assert_eq!(show_size(3 << 40), "3TiB");
    }

    #[test]
    fn size_flags_and_variables_take_units() {
        let config =
            parse(&["--max-body", "256KiB", "--history-bytes", "64MiB"], &[("SSED_MAX_LAG", "1M")]).unwrap();
        assert_eq!((config.max_body, config.history_bytes, config.max_lag), (256 << 10, 64 << 20, 1 << 20));
    }

    #[test]
    fn out_of_range_numbers_name_the_flag_and_the_range() {
        for (flag, max) in [
            ("--heartbeat", ssed::TIMEOUT_CEILING.as_secs()),
            ("--header-timeout", ssed::TIMEOUT_CEILING.as_secs()),
            ("--keep-alive-timeout", ssed::TIMEOUT_CEILING.as_secs()),
            ("--shutdown-timeout", ssed::TIMEOUT_CEILING.as_secs()),
            ("--max-lifetime", ssed::AGE_CEILING.as_secs()),
            ("--history-age", ssed::AGE_CEILING.as_secs()),
            ("--retry-ms", ssed::RETRY_CEILING.as_millis() as u64),
            ("--history", ssed::HISTORY_CEILING as u64),
            ("--max-connections", ssed::CONNECTIONS_CEILING as u64),
            ("--max-body", ssed::BODY_CEILING as u64),
            ("--history-bytes", ssed::BYTES_CEILING),
            ("--max-lag", ssed::BYTES_CEILING),
        ] {
            for value in [(max + 1).to_string(), u64::MAX.to_string(), "99999999999999999999".into()] {
                let err = parse(&[flag, &value], &[]).map(|_| ()).unwrap_err();
                assert!(err.starts_with(flag), "{err}");
                assert!(err.contains("out of range: ") && err.contains(&format!(" to {max}")), "{err}");
            }
            let at_max = parse(&[flag, &max.to_string()], &[]);
            assert!(at_max.is_ok(), "{flag} {max}: {:?}", at_max.map(|_| ()));
        }
        let err = parse(&["--history", "-5"], &[]).map(|_| ()).unwrap_err();
        assert!(err.contains("out of range: 1 to"), "{err}");
        let err = parse(&["--history", "lots"], &[]).map(|_| ()).unwrap_err();
        assert!(err.contains("is not a whole number"), "{err}");
    }

    #[test]
    fn a_flag_overrides_a_bad_variable_and_help_ignores_them() {
        let env = [("SSED_HISTORY", "-5"), ("SSED_HEARTBEAT", "forever")];
        assert_eq!(parse(&["--help"], &env).map(|_| ()), Err("help".into()));
        assert_eq!(parse(&["--history", "x", "-h"], &env).map(|_| ()), Err("help".into()));
        assert_eq!(parse(&["--version"], &env).map(|_| ()), Err("version".into()));
        let config = parse(&["--history", "10", "--heartbeat", "0"], &env).unwrap();
        assert_eq!((config.history, config.heartbeat), (10, Duration::ZERO));
        let err = parse(&["--history", "10"], &env).map(|_| ()).unwrap_err();
        assert!(err.contains("--heartbeat") && err.contains("(from SSED_HEARTBEAT)"), "{err}");
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let env =
            [("SSED_HISTORY", ""), ("SSED_HEARTBEAT", "  "), ("SSED_CORS_ORIGIN", ""), ("SSED_FSYNC", "")];
        assert_eq!(parse(&[], &env).unwrap(), Config::default());
    }

    #[test]
    fn cors_flags_replace_the_variables_list() {
        let env = [("SSED_CORS_ORIGIN", "https://a.example, https://b.example")];
        assert_eq!(parse(&[], &env).unwrap().cors_origins, ["https://a.example", "https://b.example"]);
        let config =
            parse(&["--cors-origin", "https://c.example", "--cors-origin", "https://d.example"], &env)
                .unwrap();
        assert_eq!(config.cors_origins, ["https://c.example", "https://d.example"]);
    }

    #[test]
    fn fsync_without_a_data_dir_is_refused() {
        for (args, env) in [
            (&["--fsync", "never"][..], &[][..]),
            (&[][..], &[("SSED_FSYNC", "always")][..]),
            (&["--fsync", "batch"][..], &[("SSED_DATA_DIR", "")][..]),
        ] {
            let err = parse(args, env).map(|_| ()).unwrap_err();
            assert!(err.contains("--fsync applies only with --data-dir"), "{err}");
        }
        let config = parse(&["--fsync", "never", "--data-dir", "/var/lib/ssed"], &[]).unwrap();
        assert_eq!(config.fsync, ssed::Fsync::Never);
        let config = parse(&["--fsync", "always"], &[("SSED_DATA_DIR", "/var/lib/ssed")]).unwrap();
        assert_eq!(config.fsync, ssed::Fsync::Always);
    }

    #[test]
    fn help_states_the_rules_and_every_range() {
        let text = help();
        for needle in [
            "a request (head and body) not complete",
            "an empty variable counts as unset",
            "Repeated --cors-origin flags replace the\nvariable's list",
            "K, M, G or T, all powers of 1024",
            "only with --data-dir (refused without it)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        let line =
            |name: &str| text.lines().find(|l| l.starts_with(&format!("  --{name} "))).unwrap().to_string();
        assert!(line("history-bytes").contains("at least twice --max-body"));
        assert!(line("max-lag").contains("at least twice --max-body"));
        assert!(line("heartbeat").contains("[range: 0-86400]"), "{}", line("heartbeat"));
        assert!(line("max-body").contains("[range: 1-1GiB]"), "{}", line("max-body"));
        for flag in FLAGS {
            assert!(line(flag.name).contains(&format!("[env: {}]", flag.env())), "{}", line(flag.name));
            if flag.range().is_some() {
                assert!(line(flag.name).contains("[range: "), "{}", line(flag.name));
            }
        }
        // The figures the table now derives, as --help showed them when they were written by hand.
        assert!(
            line("listen").contains("[default: 127.0.0.1:8080] [env: SSED_LISTEN]"),
            "{}",
            line("listen")
        );
        assert!(line("history-bytes").contains("[default: 64MiB]"), "{}", line("history-bytes"));
        assert!(line("max-body").contains("[default: 64KiB]"), "{}", line("max-body"));
        assert!(line("max-lag").contains("[default: 1MiB]"), "{}", line("max-lag"));
        assert!(line("retry-ms").contains("[default: 3000]"), "{}", line("retry-ms"));
        assert!(line("fsync").contains("[default: batch]"), "{}", line("fsync"));
        assert!(line("cors-origin").contains("[default: unset] [env: SSED_CORS_ORIGIN]"));
    }

    #[test]
    fn every_default_shown_parses_to_the_default() {
        for flag in FLAGS {
            let shown = flag.default_shown();
            if shown == "unset" {
                continue;
            }
            let from_env = parse(&[], &[(&flag.env(), &shown)]);
            // A switch is off by its absence: only its variable takes the value shown.
            let configs = match flag.setting {
                Setting::Switch(_) => vec![from_env],
                _ => vec![parse(&[&format!("--{}", flag.name), &shown], &[]), from_env],
            };
            for config in configs {
                let config = match (flag.setting, config) {
                    (Setting::Fsync(_), Err(_)) => parse(&["--fsync", &shown, "--data-dir", "d"], &[])
                        .map(|c| Config { data_dir: None, ..c }),
                    (_, config) => config,
                };
                assert_eq!(config.unwrap(), Config::default(), "--{} {shown}", flag.name);
            }
        }
    }

    /// Every field of [`Config`] by name, each with whether it differs between `a` and `b`. The
    /// pattern names every field (no `..`), so a field added to `Config` does not compile here until
    /// it is listed, and then [`every_config_field_has_exactly_one_flag`] fails until a flag sets it.
    fn fields(a: &Config, b: &Config) -> Vec<(&'static str, bool)> {
        macro_rules! fields {
            ($($field:ident),* $(,)?) => {{
                let Config { $($field: _),* } = a;
                vec![$((stringify!($field), a.$field != b.$field)),*]
            }};
        }
        fields!(
            listen,
            history,
            history_bytes,
            heartbeat,
            retry,
            max_connections,
            max_body,
            max_lag,
            header_timeout,
            keep_alive_timeout,
            publish_token,
            subscribe_token,
            cors_origins,
            max_lifetime,
            shutdown_timeout,
            data_dir,
            fsync,
            history_age,
            redis,
            redis_key,
            redis_maxlen,
            reuse_port,
            jwt_key,
            jwt_alg,
            publisher_jwt_key,
            publisher_jwt_alg,
            subscriber_jwt_key,
            subscriber_jwt_alg,
            jwt_issuers,
            jwt_audiences,
            hub_url,
            deny_anonymous,
            no_legacy_tokens,
            legacy_query_token,
            jwt_cookie,
            publish_origins,
            tls_cert,
            tls_key,
            tls_listen,
        )
    }

    /// A value for the flag that is valid and differs from its default.
    fn other_than_default(flag: &Flag) -> String {
        match (flag.setting, flag.range()) {
            (_, Some((min, max, _))) => {
                let shown = flag.default_shown();
                let default = parse_size(&shown, true).expect("a numeric default parses");
                if default == max { min } else { max }.to_string()
            }
            (Setting::Addr(_) | Setting::OptAddr(_), _) => "127.0.0.2:1".into(),
            (Setting::Text(_), _) => "t0ken".into(),
            (Setting::Path(_), _) => "/var/lib/elsewhere".into(),
            (Setting::List(_), _) => "https://other.example".into(),
            (Setting::Fsync(_), _) => {
                ["always", "batch", "never"].into_iter().find(|m| *m != flag.default_shown()).unwrap().into()
            }
            (Setting::Name(_), _) => "other:key".into(),
            (Setting::Switch(_), _) => "1".into(),
            (
                Setting::Count { .. } | Setting::Bytes { .. } | Setting::Secs { .. } | Setting::Millis { .. },
                None,
            ) => {
                unreachable!("--{} is numeric", flag.name)
            }
        }
    }

    /// Each flag sets one field of `Config` and no other, no two flags set the same field, and every
    /// field has a flag; the flag's variable sets it alike.
    #[test]
    fn every_config_field_has_exactly_one_flag() {
        let default = Config::default();
        let mut set = Vec::new();
        for flag in FLAGS {
            let value = other_than_default(flag);
            let mut config = Config::default();
            apply(&mut config, flag, &value).unwrap_or_else(|e| panic!("--{} {value}: {e}", flag.name));
            let changed: Vec<_> = fields(&config, &default)
                .into_iter()
                .filter(|(_, differs)| *differs)
                .map(|(f, _)| f)
                .collect();
            assert_eq!(changed.len(), 1, "--{} {value} changed {changed:?}", flag.name);
            assert!(!set.contains(&changed[0]), "--{} sets {} too", flag.name, changed[0]);
            set.push(changed[0]);

            let mut env = vec![(flag.env(), value.clone())];
            if let Setting::Fsync(_) = flag.setting {
                env.push(("SSED_DATA_DIR".into(), "d".into()));
                config.data_dir = Some("d".into());
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(parse(&[], &env), Ok(config), "{} {value}", flag.env());
        }
        let mut every: Vec<_> = fields(&default, &default).into_iter().map(|(f, _)| f).collect();
        every.sort_unstable();
        set.sort_unstable();
        assert_eq!(set, every, "fields without a flag");
    }

    /// The README's configuration table names every flag and its variable, so the documentation
    /// cannot drift from the flag table.
    #[test]
    fn the_readme_documents_every_flag_and_variable() {
        let readme = include_str!("../../README.md");
        for flag in FLAGS {
            assert!(readme.contains(&format!("`--{}", flag.name)), "README: no `--{}", flag.name);
            let env = flag.env();
            assert!(readme.contains(&format!("`{env}`")), "README: no {env}");
        }
    }
}
