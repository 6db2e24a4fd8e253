//! The commands that talk to a running master through its control socket: `status`, `restart`,
//! `resize`, `stop` and `events`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ControlArgs, EventsArgs, ResizeArgs, RestartArgs, SendArgs, StatusArgs, StopArgs};
use crate::cluster::human_duration;
use crate::control::{ClientError, Connection, Reply, Request};
use crate::output;
use crate::procfs;

/// How long a master has to answer a request that needs no roll or stop.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// How long `stop` waits for the master's process to be gone once it said it stopped.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// `mcluster status [--ready] [--json]`.
pub(super) fn status(args: &StatusArgs) -> ExitCode {
    run(|| {
        let reply = ask(&args.control, &Request::Status)?;
        let status = reply.value.get("status").cloned().unwrap_or(Value::Null);
        let ready = status.get("ready").and_then(Value::as_bool) == Some(true);
        if args.control.json {
            println!("{}", reply.raw(Some("status")));
        } else if !args.ready {
            print!("{}", describe_status(&status));
        }
        if args.ready && !ready {
            output::master_line(&format!("not ready: {}", unready_slots(&status)));
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `mcluster restart [--json]`: blocks until the roll has ended.
pub(super) fn restart(args: &RestartArgs) -> ExitCode {
    run(|| {
        let mut connection = Connection::open(args.control.control.as_deref(), &Request::Restart)?;
        let reply = connection.reply()?;
        let outcome = reply.value.get("restart").cloned().unwrap_or(Value::Null);
        let kind = outcome.get("outcome").and_then(Value::as_str).unwrap_or("");
        if args.control.json {
            println!("{}", reply.raw(Some("restart")));
        }
        let text = |key: &str| outcome.get(key).and_then(Value::as_str).unwrap_or("");
        let number = |key: &str| outcome.get(key).and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "rolled" => {
                if !args.control.json {
                    println!(
                        "rolled generation {} in {}",
                        number("generation"),
                        human_duration(Duration::from_millis(number("duration_ms")))
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            "aborted" => {
                if !args.control.json {
                    output::master_line(&format!(
                        "error: the roll to generation {} was aborted: {}",
                        number("generation"),
                        text("why")
                    ));
                    let stderr = outcome.get("stderr").and_then(Value::as_array);
                    for line in stderr.into_iter().flatten().filter_map(Value::as_str) {
                        eprintln!("  | {line}");
                    }
                }
                Ok(ExitCode::FAILURE)
            }
            _ => {
                if !args.control.json {
                    output::master_line(&format!("error: no roll: {}", text("why")));
                }
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// `mcluster resize N [--no-wait] [--json]`: blocks until every slot of the new size has a
/// ready worker, or another size was asked for first (status 1); with `--no-wait`, until the
/// master has taken the size.
pub(super) fn resize(args: &ResizeArgs) -> ExitCode {
    run(|| {
        let mut connection = Connection::open(
            args.control.control.as_deref(),
            &Request::Resize {
                size: args.size,
                wait: !args.no_wait,
            },
        )?;
        let reply = connection.reply()?;
        let outcome = reply.value.get("resize").cloned().unwrap_or(Value::Null);
        let size = outcome.get("size").and_then(Value::as_u64).unwrap_or(0);
        let kind = outcome.get("outcome").and_then(Value::as_str);
        let resized = matches!(kind, Some("resized" | "taken"));
        if args.control.json {
            println!("{}", reply.raw(Some("resize")));
        } else if kind == Some("taken") {
            println!("resizing to {}", workers(size));
        } else if resized {
            println!("resized to {}", workers(size));
        } else {
            output::master_line(&format!(
                "error: the resize to {} was superseded: a later resize to {} won",
                workers(u64::try_from(args.size).unwrap_or(u64::MAX)),
                workers(size)
            ));
        }
        Ok(if resized {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// `mcluster send --slot N|--all JSON [--json]`: exits 0 once the message is queued on the
/// channel of every worker addressed, 1 with why when it is not (a worker gone, a channel full).
pub(super) fn send(args: &SendArgs) -> ExitCode {
    run(|| {
        let request = Request::Send {
            slot: args.slot,
            message: args.message.clone(),
        };
        let reply = ask(&args.control, &request)?;
        if args.control.json {
            println!("{}", reply.raw(Some("send")));
        } else {
            let slots = reply
                .value
                .pointer("/send/slots")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            println!(
                "sent to {}",
                workers(u64::try_from(slots).unwrap_or(u64::MAX))
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `1 worker`, `4 workers`.
fn workers(count: u64) -> String {
    if count == 1 {
        "1 worker".to_owned()
    } else {
        format!("{count} workers")
    }
}

/// `mcluster stop [--hard] [--json]`: returns when the master is gone.
pub(super) fn stop(args: &StopArgs) -> ExitCode {
    run(|| {
        let mut connection = Connection::open(
            args.control.control.as_deref(),
            &Request::Stop { hard: args.hard },
        )?;
        let mut pid = None;
        let mut stopped = false;
        while let Some(reply) = connection.next_reply()? {
            pid = reply.value.get("pid").and_then(Value::as_i64).or(pid);
            if reply.value.get("stopped") == Some(&Value::Bool(true)) {
                stopped = true;
            }
        }
        if !stopped {
            return Err(ClientError {
                message: "the master closed the connection before it had stopped".to_owned(),
                status: 1,
            });
        }
        // The master has stopped its workers; its process exits right after.
        let gone = pid
            .and_then(|pid| i32::try_from(pid).ok())
            .is_none_or(wait_gone);
        if args.control.json {
            println!(
                "{}",
                serde_json::json!({"stopped": true, "pid": pid, "exited": gone})
            );
        } else if let Some(pid) = pid {
            println!("master pid {pid} stopped");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits until process `pid` has exited (gone, or a zombie nobody reaped yet).
fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        if procfs::stat(pid).is_none_or(|stat| stat.exited()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `mcluster events`: one JSON line per event until the master stops.
pub(super) fn events(args: &EventsArgs) -> ExitCode {
    run(|| {
        let mut connection = Connection::open(args.control.control.as_deref(), &Request::Events)?;
        connection.set_timeout(Some(ANSWER_DEADLINE));
        let ack = connection.reply()?;
        connection.set_timeout(None);
        // On stderr, so that stdout is the JSON lines alone; from here on no event is missed.
        output::master_line(&format!(
            "following the events of master pid {}",
            ack.value.get("pid").unwrap_or(&Value::Null)
        ));
        let mut stdout = std::io::stdout().lock();
        while let Some(record) = connection.next_reply()? {
            if writeln!(stdout, "{}", record.raw(None))
                .and_then(|()| stdout.flush())
                .is_err()
            {
                // Whoever read our output is gone (`| head`).
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Sends `request` and waits for its one reply.
fn ask(args: &ControlArgs, request: &Request) -> Result<Reply, ClientError> {
    let mut connection = Connection::open(args.control.as_deref(), request)?;
    connection.set_timeout(Some(ANSWER_DEADLINE));
    connection.reply()
}

/// Runs a client command: an error is one `mcluster: error:` line and its exit status.
fn run(command: impl FnOnce() -> Result<ExitCode, ClientError>) -> ExitCode {
    match command() {
        Ok(code) => code,
        Err(error) => {
            output::master_line(&format!("error: {}", error.message));
            ExitCode::from(error.status)
        }
    }
}

/// Which slots have no ready worker, for `status --ready`.
fn unready_slots(status: &Value) -> String {
    let size = status.get("size").and_then(Value::as_u64).unwrap_or(0);
    let workers = status
        .get("workers")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let ready = |slot: u64| {
        workers.iter().any(|w| {
            w.get("slot").and_then(Value::as_u64) == Some(slot)
                && w.get("state").and_then(Value::as_str) == Some("ready")
        })
    };
    let missing: Vec<String> = (0..size)
        .filter(|&slot| !ready(slot))
        .map(|slot| format!("w{slot}"))
        .collect();
    if missing.is_empty() {
        "the master is starting or stopping".to_owned()
    } else {
        let have = if missing.len() == 1 { "has" } else { "have" };
        format!(
            "{} of {size} slots {have} no ready worker ({})",
            missing.len(),
            missing.join(", ")
        )
    }
}

/// The text form of a status.
fn describe_status(status: &Value) -> String {
    let text = |value: &Value, key: &str| -> String {
        match value.get(key) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None => "-".to_owned(),
            Some(other) => other.to_string(),
        }
    };
    let number = |value: &Value, key: &str| value.get(key).and_then(Value::as_u64);
    let duration = |value: &Value, key: &str| {
        number(value, key).map_or_else(|| "-".to_owned(), |ms| uptime(Duration::from_millis(ms)))
    };
    let bytes = |value: &Value, key: &str| number(value, key).map_or_else(|| "-".to_owned(), mib);
    let listeners: Vec<String> = status
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    let rolls = status.get("rolls").cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "master pid {} ({}), up {}, rss {}, listening on {}\n",
        text(status, "pid"),
        text(status, "mode"),
        duration(status, "uptime_ms"),
        bytes(status, "rss_bytes"),
        listeners.join(", ")
    );
    let _ = writeln!(
        out,
        "{}, generation {} serving, {}{}; rolls: {} started, {} completed, {} aborted",
        match number(status, "size") {
            Some(size) => workers(size),
            None => format!("{} workers", text(status, "size")),
        },
        text(status, "serving_generation"),
        if status.get("ready") == Some(&Value::Bool(true)) {
            "all ready"
        } else {
            "not all ready"
        },
        if status.get("rolling") == Some(&Value::Bool(true)) {
            ", rolling"
        } else {
            ""
        },
        text(&rolls, "started"),
        text(&rolls, "completed"),
        text(&rolls, "aborted"),
    );
    if let Some(last) = status.get("last_roll").filter(|last| !last.is_null()) {
        let took = human_duration(Duration::from_millis(
            number(last, "duration_ms").unwrap_or(0),
        ));
        let generation = text(last, "generation");
        let _ = match last.get("aborted").and_then(Value::as_str) {
            Some(why) => writeln!(
                out,
                "last roll: generation {generation} aborted after {took}: {why}"
            ),
            None => writeln!(
                out,
                "last roll: generation {generation} completed in {took}"
            ),
        };
    }
    let mut rows = vec![
        [
            "SLOT", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "RSS", "STATUS",
        ]
        .map(str::to_owned),
    ];
    for worker in status
        .get("workers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push([
            text(worker, "slot"),
            text(worker, "pid"),
            text(worker, "generation"),
            text(worker, "state"),
            duration(worker, "uptime_ms"),
            text(worker, "restarts"),
            bytes(worker, "rss_bytes"),
            text(worker, "status"),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An uptime as `3d4h`, `2h05m`, `4m07s` or `12.3s`.
fn uptime(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 86_400 {
        format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600)
    } else if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Bytes in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!(
        "{}.{}MiB",
        bytes / (1 << 20),
        bytes % (1 << 20) * 10 / (1 << 20)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_and_sizes_read_at_a_glance() {
        assert_eq!(uptime(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(uptime(Duration::from_secs(247)), "4m07s");
        assert_eq!(uptime(Duration::from_mins(125)), "2h05m");
        assert_eq!(uptime(Duration::from_hours(76)), "3d4h");
        assert_eq!(mib(5 * (1 << 20) + (1 << 19)), "5.5MiB");
    }

    #[test]
    fn unready_slots_are_named() {
        let status = serde_json::json!({
            "size": 2,
            "workers": [
                {"slot": 0, "state": "ready"},
                {"slot": 1, "state": "starting"},
            ],
        });
        assert_eq!(
            unready_slots(&status),
            "1 of 2 slots has no ready worker (w1)"
        );
    }

    /// `status` said "1 workers".
    #[test]
    fn one_worker_is_one_worker() {
        let status = |size: u64| {
            describe_status(&serde_json::json!({"size": size, "rolls": {}, "workers": []}))
        };
        assert!(
            status(1)
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("1 worker, generation "),
            "{}",
            status(1)
        );
        assert!(
            status(3)
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("3 workers, generation "),
            "{}",
            status(3)
        );
        assert_eq!(workers(1), "1 worker");
        assert_eq!(workers(0), "0 workers");
    }

    /// The README's sample of `mcluster status` is what it prints for that status.
    #[test]
    fn the_readme_s_status_sample_is_what_status_prints() {
        let readme = include_str!("../../README.md");
        let sample = readme
            .split("$ mcluster status\n")
            .nth(1)
            .and_then(|rest| rest.split("$ ").next())
            .unwrap();
        // MiB with one decimal, as printed (rounded down), as bytes.
        let mib = |tenths: u64| tenths * (1 << 20) / 10 + 1;
        let worker = |slot: u64, pid: u64, rss: u64| {
            serde_json::json!({"slot": slot, "pid": pid, "generation": 1, "state": "ready",
                "uptime_ms": 1500, "restarts": 0, "rss_bytes": mib(rss), "status": null})
        };
        let status = serde_json::json!({
            "pid": 9452, "mode": "start", "listeners": ["127.0.0.1:3000"], "size": 4,
            "serving_generation": 1, "rolling": false, "ready": true, "uptime_ms": 1500,
            "rss_bytes": mib(101), "rolls": {"started": 0, "completed": 0, "aborted": 0},
            "last_roll": null,
            "workers": [worker(0, 9461, 20), worker(1, 9465, 19), worker(2, 9469, 18),
                worker(3, 9473, 19)],
        });
        assert_eq!(describe_status(&status), sample);
    }
}
