//! Command-line arguments (contract §1, §17): `-c FILE`, `-t`, `-u`, `-d`, `--version`,
//! `--help`.

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Run),
    /// Check the config and exit.
    Test(Option<String>),
    Version,
    Help,
}

/// How to run the gateway.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// The config file (`None`: the built-in defaults).
    pub conf: Option<String>,
    /// Take the listening sockets over from the process running now (`-u`).
    pub upgrade: bool,
    /// Fork into the background once serving (`-d`).
    pub daemon: bool,
}

pub const USAGE: &str = "\
usage: ratelimiter [-t | [-u] [-d]] [-c FILE]
       ratelimiter --version

  -c, --conf FILE   the TOML config (default: built-in defaults, the embedded store)
  -t, --test        check the config and every file it names, and exit: 0 and a
                    summary when valid, 1 and every error on stderr when not
  -u, --upgrade     take the listening sockets over from the node running with this
                    config, which then drains and exits (a zero-downtime upgrade)
  -d, --daemon      run in the background; the command returns once the node serves
                    (0), or fails (1)
  -V, --version     print the version
  -h, --help        print this help

Environment: RUST_LOG, when set, sets the log level instead of [log] level; the
config's strings take ${VAR} and ${VAR:-default}; RATELIMITER_* override the config
(see the README).";

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut conf = None;
    let mut test = false;
    let mut upgrade = false;
    let mut daemon = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--conf" => match args.next() {
                Some(path) if !path.starts_with('-') => conf = Some(path),
                _ => return Err(format!("{arg} needs a file")),
            },
            "-t" | "--test" => test = true,
            "-u" | "--upgrade" => upgrade = true,
            "-d" | "--daemon" => daemon = true,
            "-V" | "--version" => return Ok(Command::Version),
            "-h" | "--help" => return Ok(Command::Help),
            other => match other.strip_prefix("--conf=") {
                Some(path) if !path.is_empty() => conf = Some(path.to_string()),
                _ => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    if test && (upgrade || daemon) {
        return Err("-t goes with neither -u nor -d".into());
    }
    Ok(match test {
        true => Command::Test(conf),
        false => Command::Run(Run {
            conf,
            upgrade,
            daemon,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(conf: &str) -> Run {
        Run {
            conf: Some(conf.into()),
            ..Run::default()
        }
    }

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_contract_forms() {
        assert_eq!(p(&["-c", "a.toml"]), Ok(Command::Run(run("a.toml"))));
        assert_eq!(
            p(&["-t", "-c", "a.toml"]),
            Ok(Command::Test(Some("a.toml".into())))
        );
        assert_eq!(
            p(&["-c", "a.toml", "-t"]),
            Ok(Command::Test(Some("a.toml".into())))
        );
        assert_eq!(p(&["--conf=a.toml"]), Ok(Command::Run(run("a.toml"))));
        assert_eq!(
            p(&["-u", "-d", "-c", "a.toml"]),
            Ok(Command::Run(Run {
                upgrade: true,
                daemon: true,
                ..run("a.toml")
            }))
        );
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&[]), Ok(Command::Run(Run::default())));
    }

    #[test]
    fn rejects_unknown_and_incomplete_arguments() {
        assert!(p(&["-c"]).is_err());
        assert!(p(&["-c", "-t"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["-t", "-u"]).is_err());
        assert!(p(&["-t", "-d"]).is_err());
    }
}
