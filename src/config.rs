//! Validated settings: parsing of durations, environment pairs, signals and programs, with one
//! clear error message naming the culprit for each kind of bad input.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An error of the master: bad input, or the OS refusing something at start.
#[derive(Debug)]
pub enum Error {
    /// Bad input: a flag, an address, a program, an environment pair.
    Usage(String),
    /// The OS refused something the master needed.
    Io {
        /// What the master was doing.
        context: String,
        /// What the OS said.
        source: io::Error,
    },
}

impl Error {
    /// A usage error with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// Wraps an OS error with what the master was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit status for this error: 2 for bad input, 1 otherwise.
    #[must_use]
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Io { .. } => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => f.write_str(message),
            Error::Io { context, source } => write!(f, "{context}: {}", describe_io(source)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(_) => None,
            Error::Io { source, .. } => Some(source),
        }
    }
}

/// The OS's words for an error, without Rust's `(os error N)` suffix.
fn describe_io(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_lowercase(),
        None => text,
    }
}

/// Parses a duration: a number with `ms`, `s` or `m`; a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("invalid duration '{text}': expected a number with ms, s or m"))?;
    let millis = match unit {
        "" | "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => {
            return Err(format!(
                "invalid duration '{text}': unknown unit '{unit}' (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(millis / 1000.0)
        .map_err(|_| format!("invalid duration '{text}': too large"))
}

/// Parses a `KEY=VALUE` pair for a worker's environment.
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') && !value.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "invalid environment pair '{text}': expected KEY=VALUE"
        )),
    }
}

/// Parses a signal name (`TERM`, `SIGTERM`, `term`) or number into its number.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(number) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number)
            .map(|signal| signal as i32)
            .map_err(|_| format!("invalid signal '{text}'"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|signal| signal as i32)
        .map_err(|_| format!("invalid signal '{text}': expected a name like TERM or INT"))
}

/// Finds the program a worker runs: a path with a `/` as it is, anything else on `PATH`.
/// It must be an executable file.
pub fn resolve_program(program: &Path) -> Result<PathBuf, Error> {
    let shown = program.display();
    if program.as_os_str().is_empty() {
        return Err(Error::usage("the program to run is empty"));
    }
    let candidate = if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        program.to_path_buf()
    } else {
        let path = env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| Error::usage(format!("program not found: {shown} (not on PATH)")))?
    };
    let metadata = std::fs::metadata(&candidate)
        .map_err(|_| Error::usage(format!("program not found: {shown}")))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(Error::usage(format!("program is not executable: {shown}")));
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_numbers_are_milliseconds() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert!(parse_duration("5x").unwrap_err().contains("'5x'"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn env_pairs_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_pair("A").unwrap_err().contains("'A'"));
        assert!(parse_env_pair("=x").is_err());
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigint"), Ok(2));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn programs_are_found_on_path_and_must_be_executable() {
        assert!(resolve_program(Path::new("sh")).is_ok());
        let missing = resolve_program(Path::new("no-such-program-xyz")).unwrap_err();
        assert!(missing.to_string().contains("no-such-program-xyz"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let error = resolve_program(&plain).unwrap_err().to_string();
        assert!(error.contains("not executable"), "{error}");
    }
}
