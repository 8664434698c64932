//! The `ratelimiter` binary: parses arguments, sets up logging, loads the config and hands
//! over to the library.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ratelimiter::cli::{self, Command, USAGE};
use ratelimiter::config::{Config, ConfigErrors};

fn load(path: Option<&str>) -> Result<Config, ConfigErrors> {
    match path {
        Some(path) => Config::load(path),
        None => Config::parse("<defaults>", "", &|var| std::env::var(var).ok()),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ratelimiter: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Version => {
            println!("ratelimiter {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Test(path) => match load(path.as_deref()) {
            Ok(config) => {
                let name = path.as_deref().unwrap_or("<defaults>");
                println!("{name}: ok: {}", config.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run(path) => {
            let config = match load(path.as_deref()) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            match ratelimiter::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ratelimiter: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
