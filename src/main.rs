//! The `ssed` binary: flags (and their environment variables) to a validated [`Config`], a logger, run.

use std::process::ExitCode;
use std::time::Duration;

use ssed::{systemd, Config, Server};

/// One flag: its name, environment variable, default as shown in `--help`, and meaning. The same table
/// drives parsing, the environment and the help text, so they cannot drift apart.
struct Flag {
    name: &'static str,
    env: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        env: "SSED_LISTEN",
        value: "ADDR",
        default: "127.0.0.1:8080",
        help: "address to bind (ignored under systemd socket activation)",
    },
    Flag {
        name: "history",
        env: "SSED_HISTORY",
        value: "N",
        default: "10000",
        help: "events kept for resume",
    },
    Flag {
        name: "history-bytes",
        env: "SSED_HISTORY_BYTES",
        value: "N",
        default: "67108864",
        help: "cap on the bytes those events hold; the oldest are dropped first",
    },
    Flag {
        name: "heartbeat",
        env: "SSED_HEARTBEAT",
        value: "SECS",
        default: "15",
        help: "comment line after this long without bytes on a stream; 0 disables",
    },
    Flag {
        name: "retry-ms",
        env: "SSED_RETRY_MS",
        value: "MS",
        default: "3000",
        help: "retry: sent at the start of each stream",
    },
    Flag {
        name: "max-connections",
        env: "SSED_MAX_CONNECTIONS",
        value: "N",
        default: "100000",
        help: "connections held open (capped by the file-descriptor limit)",
    },
    Flag {
        name: "max-body",
        env: "SSED_MAX_BODY",
        value: "BYTES",
        default: "65536",
        help: "larger publish bodies get 413",
    },
    Flag {
        name: "max-lag",
        env: "SSED_MAX_LAG",
        value: "BYTES",
        default: "1048576",
        help: "a subscriber this far behind is disconnected (at least 2 x --max-body)",
    },
    Flag {
        name: "header-timeout",
        env: "SSED_HEADER_TIMEOUT",
        value: "SECS",
        default: "10",
        help: "a request head not complete by then gets 408",
    },
    Flag {
        name: "keep-alive-timeout",
        env: "SSED_KEEP_ALIVE_TIMEOUT",
        value: "SECS",
        default: "60",
        help: "an idle keep-alive connection is closed after this long",
    },
    Flag {
        name: "publish-token",
        env: "SSED_PUBLISH_TOKEN",
        value: "TOKEN",
        default: "unset",
        help: "publishing needs Authorization: Bearer TOKEN",
    },
    Flag {
        name: "subscribe-token",
        env: "SSED_SUBSCRIBE_TOKEN",
        value: "TOKEN",
        default: "unset",
        help: "subscribing needs that bearer token or cookie ssed_token=TOKEN",
    },
    Flag {
        name: "cors-origin",
        env: "SSED_CORS_ORIGIN",
        value: "ORIGIN",
        default: "unset",
        help: "allow this origin (repeatable; the variable takes a comma-separated list), or *",
    },
    Flag {
        name: "max-lifetime",
        env: "SSED_MAX_LIFETIME",
        value: "SECS",
        default: "0",
        help: "end each stream after this long, +-20% at random; 0 disables",
    },
    Flag {
        name: "shutdown-timeout",
        env: "SSED_SHUTDOWN_TIMEOUT",
        value: "SECS",
        default: "5",
        help: "how long a graceful shutdown waits for buffered bytes",
    },
    Flag {
        name: "data-dir",
        env: "SSED_DATA_DIR",
        value: "DIR",
        default: "unset",
        help: "keep the history in segment files here so it survives restarts and crashes",
    },
    Flag {
        name: "fsync",
        env: "SSED_FSYNC",
        value: "MODE",
        default: "batch",
        help: "with --data-dir: always (sync each event), batch (one sync per loop turn), never",
    },
    Flag {
        name: "history-age",
        env: "SSED_HISTORY_AGE",
        value: "SECS",
        default: "0",
        help: "events older than this leave the history (memory and disk); 0 keeps them",
    },
];

fn help() -> String {
    let mut text = String::from(
        "ssed: a Server-Sent Events broadcast server\n\n\
         Usage: ssed [OPTIONS]\n\n\
         Every option can also be set through the environment variable shown; a flag wins over it.\n\n\
         Options:\n",
    );
    for flag in FLAGS {
        let left = format!("  --{} {}", flag.name, flag.value);
        text.push_str(&format!("{left:<34}{} [default: {}] [env: {}]\n", flag.help, flag.default, flag.env));
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

fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("--{name}: {text:?} is not a valid number"))
}

fn apply(config: &mut Config, name: &str, value: &str) -> Result<(), String> {
    let secs = |v: &str| parse_number::<u64>(name, v).map(Duration::from_secs);
    match name {
        "listen" => {
            config.listen = value
                .parse()
                .map_err(|_| format!("--listen: {value:?} is not an address like 127.0.0.1:8080"))?
        }
        "history" => config.history = parse_number(name, value)?,
        "history-bytes" => config.history_bytes = parse_number(name, value)?,
        "heartbeat" => config.heartbeat = secs(value)?,
        "retry-ms" => config.retry = Duration::from_millis(parse_number(name, value)?),
        "max-connections" => config.max_connections = parse_number(name, value)?,
        "max-body" => config.max_body = parse_number(name, value)?,
        "max-lag" => config.max_lag = parse_number(name, value)?,
        "header-timeout" => config.header_timeout = secs(value)?,
        "keep-alive-timeout" => config.keep_alive_timeout = secs(value)?,
        "publish-token" => config.publish_token = Some(value.to_string()),
        "subscribe-token" => config.subscribe_token = Some(value.to_string()),
        "cors-origin" => config.cors_origins.push(value.to_string()),
        "max-lifetime" => config.max_lifetime = secs(value)?,
        "shutdown-timeout" => config.shutdown_timeout = secs(value)?,
        "data-dir" => config.data_dir = Some(value.into()),
        "fsync" => config.fsync = value.parse().map_err(|e: ssed::Error| e.to_string())?,
        "history-age" => config.history_age = secs(value)?,
        _ => return Err(format!("unknown option --{name}")),
    }
    Ok(())
}

/// Reads the environment first, then the flags, so a flag overrides its variable.
fn parse_args() -> Result<Command, String> {
    let mut config = Config::default();
    for flag in FLAGS {
        if let Ok(value) = std::env::var(flag.env) {
            if value.is_empty() {
                continue; // an empty line in an EnvironmentFile means "not set"
            }
            if flag.name == "cors-origin" {
                config
                    .cors_origins
                    .extend(value.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from));
            } else {
                apply(&mut config, flag.name, &value).map_err(|e| format!("{} (from {})", e, flag.env))?;
            }
        }
    }
    let mut from_env_cors = true;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => return Ok(Command::Help),
            lexopt::Arg::Short('V') | lexopt::Arg::Long("version") => return Ok(Command::Version),
            lexopt::Arg::Long(name) => {
                let name = name.to_string();
                if !FLAGS.iter().any(|f| f.name == name) {
                    return Err(format!("unknown option --{name} (see --help)"));
                }
                let value = parser.value().map_err(|e| e.to_string())?;
                let value = value.into_string().map_err(|_| format!("--{name}: value is not UTF-8"))?;
                if name == "cors-origin" && from_env_cors {
                    // Flags replace the variable's list rather than add to it.
                    config.cors_origins.clear();
                    from_env_cors = false;
                }
                apply(&mut config, &name, &value)?;
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Command::Run(Box::new(config)))
}

fn run() -> Result<(), String> {
    let config = match parse_args()? {
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
    match systemd::raise_descriptor_limit() {
        Ok((before, after)) if after > before => {
            log::info!("open-file limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => log::warn!("could not raise the open-file limit: {e}"),
    }
    let server = match systemd::take_listener().map_err(|e| e.to_string())? {
        Some(listener) => {
            let server = Server::from_listener(config, listener).map_err(|e| e.to_string())?;
            log::info!(
                "serving on the socket passed by systemd ({}); --listen is ignored",
                server.local_addr()
            );
            server
        }
        None => Server::bind(config).map_err(|e| e.to_string())?,
    };
    let server = match systemd::Notifier::from_env().map_err(|e| e.to_string())? {
        Some(notifier) => server.with_notifier(notifier),
        None => server,
    };
    watch_signals(server.shutdown_handle())?;
    server.run().map_err(|e| e.to_string())
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
///
/// A thread that only waits for signals keeps the library free of process-wide signal state; the
/// event loop still does all the serving.
fn watch_signals(shutdown: ssed::Shutdown) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("ssed-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
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
