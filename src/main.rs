//! The `ratelimiter` binary: parses arguments, loads the config, sets up logging as it says
//! and hands over to the library.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ratelimiter::cli::{self, Command, Run, USAGE};
use ratelimiter::config::{Config, DEFAULTS_NAME};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ratelimiter: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Version => {
            println!(
                "ratelimiter {} (commit {})",
                ratelimiter::VERSION,
                ratelimiter::COMMIT
            );
            ExitCode::SUCCESS
        }
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Test(path) => match Config::load_from(path.as_deref()) {
            Ok(config) => {
                let name = path.as_deref().unwrap_or(DEFAULTS_NAME);
                // Every file the start would fail on, each with the key that names it.
                let problems = ratelimiter::preflight::files(&config);
                if !problems.is_empty() {
                    for p in &problems {
                        eprintln!("{name}: {p}");
                    }
                    return ExitCode::FAILURE;
                }
                println!("{name}: ok: {}", config.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run(how) => run(how),
    }
}

/// Runs the gateway until a signal stops it.
fn run(how: Run) -> ExitCode {
    let config = match Config::load_from(how.conf.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread starts, and once the config is known good, so its errors are seen.
    let ready = match how.daemon {
        true => match ratelimiter::daemon::daemonize() {
            Ok(ready) => Some(ready),
            Err(e) => {
                eprintln!("ratelimiter: {e}");
                return ExitCode::FAILURE;
            }
        },
        false => None,
    };
    ratelimiter::logging::init(
        config.log.format,
        config.log_level,
        config.privacy.clear_keys,
    );
    let start = ratelimiter::server::Start {
        path: how.conf,
        upgrade: how.upgrade,
        ready,
    };
    match ratelimiter::server::run(config, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ratelimiter: {e}");
            ExitCode::FAILURE
        }
    }
}
