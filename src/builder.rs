//! Building the project while the old generation keeps serving.
//!
//! A cargo build runs as `cargo build --message-format=json-render-diagnostics`: cargo renders
//! its diagnostics on stderr itself (shown as they come, in colour on a terminal), and stdout
//! carries only JSON messages. The executable comes from the `compiler-artifact` message of the
//! binary target, so the workers run the binary directly, with no `cargo run` wrapper process.
//! `--build CMD` runs any command with `sh -c` instead; success is exit status 0.
//!
//! The build runs in its own process group (a cancelled build is killed as a whole), dies
//! with the master, and is reaped by the driver like every child.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdout, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use serde::Deserialize;

use crate::sys;

/// How the project is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildPlan {
    /// `cargo build` with these extra arguments (`--bin`, `-p`, `--release`, …); `bin` picks
    /// the executable when cargo builds several.
    Cargo {
        args: Vec<OsString>,
        bin: Option<String>,
    },
    /// Any shell command.
    Shell(String),
}

/// A build in flight.
#[derive(Debug)]
pub(crate) struct RunningBuild {
    pub(crate) pid: i32,
    pub(crate) started: Instant,
    messages: Option<JoinHandle<Vec<Artifact>>>,
}

/// A binary cargo built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub(crate) name: String,
    pub(crate) executable: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    #[serde(default)]
    kind: Vec<String>,
}

impl BuildPlan {
    /// Starts the build.
    pub(crate) fn start(&self, colour: bool) -> io::Result<RunningBuild> {
        let mut command = match self {
            BuildPlan::Cargo { args, .. } => {
                let mut command =
                    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                command
                    .arg("build")
                    .arg("--message-format=json-render-diagnostics")
                    .arg(if colour {
                        "--color=always"
                    } else {
                        "--color=never"
                    })
                    .args(args)
                    .stdout(Stdio::piped());
                command
            }
            BuildPlan::Shell(line) => {
                let mut command = Command::new("sh");
                command.arg("-c").arg(line).stdout(Stdio::inherit());
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        sys::die_with_parent(&mut command);
        let started = Instant::now();
        let mut child = command.spawn()?;
        let messages = match child.stdout.take() {
            Some(stdout) => Some(
                thread::Builder::new()
                    .name("build-messages".to_owned())
                    .spawn(move || read_artifacts(stdout))?,
            ),
            None => None,
        };
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        // The driver reaps every child itself; std's handle is not needed past this point.
        drop(child);
        Ok(RunningBuild {
            pid,
            started,
            messages,
        })
    }

    /// Picks the executable the workers run from what the build produced. `Ok(None)` for a
    /// shell build, whose workers run the given program.
    pub(crate) fn executable(&self, build: RunningBuild) -> Result<Option<PathBuf>, String> {
        let BuildPlan::Cargo { bin, .. } = self else {
            return Ok(None);
        };
        let artifacts = build
            .messages
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        choose_executable(&artifacts, bin.as_deref()).map(Some)
    }
}

fn read_artifacts(stdout: ChildStdout) -> Vec<Artifact> {
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Message>(&line) else {
            continue;
        };
        match message.reason.as_str() {
            "compiler-artifact" => {
                if let (Some(target), Some(executable)) = (message.target, message.executable)
                    && target.kind.iter().any(|kind| kind == "bin")
                {
                    artifacts.push(Artifact {
                        name: target.name,
                        executable,
                    });
                }
            }
            // cargo's last message: stop here, even if a daemon a build script started (a
            // compiler cache server, say) keeps the pipe open.
            "build-finished" => break,
            _ => {}
        }
    }
    artifacts
}

fn choose_executable(artifacts: &[Artifact], bin: Option<&str>) -> Result<PathBuf, String> {
    if let Some(bin) = bin {
        return artifacts
            .iter()
            .find(|artifact| artifact.name == bin)
            .map(|artifact| artifact.executable.clone())
            .ok_or_else(|| format!("cargo built no binary named '{bin}'"));
    }
    match artifacts {
        [] => {
            Err("cargo built no binary: is this a binary package? (or pass -- PROGRAM)".to_owned())
        }
        [only] => Ok(only.executable.clone()),
        several => {
            let names: Vec<&str> = several.iter().map(|a| a.name.as_str()).collect();
            Err(format!(
                "cargo built several binaries ({}); choose one with --bin",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Artifact {
        Artifact {
            name: name.to_owned(),
            executable: PathBuf::from(format!("/t/{name}")),
        }
    }

    #[test]
    fn the_only_binary_is_chosen_or_the_named_one() {
        assert_eq!(
            choose_executable(&[artifact("app")], None),
            Ok("/t/app".into())
        );
        let two = [artifact("app"), artifact("tool")];
        assert_eq!(choose_executable(&two, Some("tool")), Ok("/t/tool".into()));
        assert!(choose_executable(&two, None).unwrap_err().contains("--bin"));
        assert!(
            choose_executable(&two, Some("x"))
                .unwrap_err()
                .contains("'x'")
        );
        assert!(choose_executable(&[], None).is_err());
    }

    #[test]
    fn artifacts_are_read_from_cargo_json_messages() {
        let script = concat!(
            r#"echo '{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"executable":null}';"#,
            r#"echo 'not json';"#,
            r#"echo '{"reason":"compiler-artifact","target":{"name":"app","kind":["bin"]},"executable":"/t/app"}';"#,
            r#"echo '{"reason":"build-finished","success":true}'"#
        );
        // The script's stdout is piped, as cargo's is.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let artifacts = read_artifacts(child.stdout.take().unwrap());
        child.wait().unwrap();
        assert_eq!(artifacts, [artifact("app")]);
    }
}
