//! The control socket and the commands that use it (`status`, `restart`, `resize`, `stop`,
//! `events`), and the metrics endpoint, against real running masters.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::fixture::mcluster;

/// How many requests a master serves at once (`MAX_REQUESTS` in `src/control.rs`); more wait.
const MAX_REQUESTS: usize = 64;
/// How many clients may follow the events at once (`MAX_FOLLOWERS` in `src/control.rs`).
const MAX_FOLLOWERS: usize = 64;
use crate::support::process::{DEADLINE, proc_status, stat, wait_until};
use crate::support::script::exec_line;
use crate::support::{Master, Script, echo, fixture, is_alive, pids};

/// What a client command did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {:?}", self.stdout, self.stderr))
    }
}

/// A client command: `mcluster ARGS…`, its environment cleared of `MCLUSTER_CONTROL`.
fn client(args: &[&str]) -> Command {
    let mut command = Command::new(mcluster());
    command
        .args(args)
        .env_remove("MCLUSTER_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `command` to its end (killed after [`DEADLINE`]).
#[track_caller]
fn finish(mut command: Command) -> Run {
    let child = command.spawn().expect("spawn the client");
    wait_client(child)
}

#[track_caller]
fn wait_client(mut child: Child) -> Run {
    let start = Instant::now();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    })
    .collect();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut texts = readers.into_iter().map(|r| r.join().unwrap());
    Run {
        status,
        stdout: texts.next().unwrap(),
        stderr: texts.next().unwrap(),
    }
}

/// `mcluster ARGS… --control SOCKET`, run to its end.
#[track_caller]
fn ctl(socket: &Path, args: &[&str]) -> Run {
    let mut command = client(args);
    command.arg("--control").arg(socket);
    finish(command)
}

/// A control socket path in a directory of the test's own.
struct ControlPath {
    _dir: TempDir,
    path: PathBuf,
}

impl ControlPath {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("control.sock");
        Self { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// One request on a raw connection; returns every reply line until the master closes it.
fn raw_request(socket: &Path, bytes: &[u8], close_write: bool) -> Vec<Value> {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(bytes);
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

fn error_of(replies: &[Value]) -> String {
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["ok"], false, "{replies:?}");
    replies[0]["error"].as_str().unwrap().to_owned()
}

/// The status, through `mcluster status --json`.
#[track_caller]
fn status(socket: &Path) -> Value {
    let run = ctl(socket, &["status", "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr);
    run.json()
}

/// `restart` exits 0 for a good roll, and 1 naming the failure for a replacement that crashes
/// or never gets ready; the old generation keeps serving.
#[test]
fn restart_answers_when_the_roll_has_ended_and_how() {
    let control = ControlPath::new();
    let echo_program = fixture("fixture-echo");
    let script = Script::exec(&echo_program);
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--ready",
        "notify",
        "--ready-timeout",
        "1s",
        "--kill-timeout",
        "5s",
        "--control",
        control.arg(),
    ];
    let (master, _) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 2);
    let port = master.port();

    let run = ctl(&control.path, &["restart"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert!(
        run.stdout.starts_with("rolled generation 2 in "),
        "{}",
        run.stdout
    );
    // The master's own lines reach the test's reader a moment after the reply.
    master.wait_for_stderr("mcluster: rolled 2 workers to generation 2");
    let good = master.generation(2);
    assert_eq!(good.len(), 2);

    script.rewrite("echo 'replacement: cannot start' >&2\nexit 3");
    let run = ctl(&control.path, &["restart"]);
    assert_eq!(run.code(), 1, "{}{}", run.stderr, master.dump());
    assert!(
        run.stderr
            .starts_with("mcluster: error: the roll to generation 3 was aborted: "),
        "{}",
        run.stderr
    );
    // The shape of the README's sample: `w1 (pid 9971) exited with status 78 before it was
    // ready; generation 1 keeps serving`, then the replacement's last stderr lines.
    let lines: Vec<&str> = run.stderr.lines().collect();
    let why = lines[0]
        .strip_prefix("mcluster: error: the roll to generation 3 was aborted: w")
        .and_then(|why| why.split_once(" (pid "))
        .and_then(|(_, why)| why.split_once(") "))
        .map(|(_, why)| why);
    assert_eq!(
        why,
        Some("exited with status 3 before it was ready; generation 2 keeps serving"),
        "{}",
        run.stderr
    );
    assert_eq!(
        lines[1..],
        ["  | replacement: cannot start"],
        "{}",
        run.stderr
    );

    // Never ready: the 1 s deadline aborts the roll.
    script.rewrite("echo 'stub: started'\nexec sleep 60");
    let run = ctl(&control.path, &["restart", "--json"]);
    assert_eq!(run.code(), 1, "{}{}", run.stderr, master.dump());
    let outcome = run.json();
    assert_eq!(outcome["outcome"], "aborted", "{outcome}");
    assert_eq!(outcome["generation"], 4, "{outcome}");
    assert_eq!(outcome["slots"], serde_json::json!([2, 2]), "{outcome}");
    assert!(
        outcome["why"].as_str().unwrap().contains("ready"),
        "{outcome}"
    );
    // The good generation served through both aborted rolls.
    assert!(good.iter().all(|w| is_alive(w.pid)), "{}", master.dump());
    assert_eq!(echo(port, "still").generation, 2);

    script.rewrite(&exec_line(&echo_program));
    let run = ctl(&control.path, &["restart", "--json"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.json()["outcome"], "rolled");
    assert_eq!(run.json()["generation"], 5);
}

/// While a roll waits on a replacement, `status` shows it starting beside the old worker, and
/// `events` shows the roll from its start to its end.
#[test]
fn status_during_a_roll_and_events_of_it() {
    let control = ControlPath::new();
    let echo_program = fixture("fixture-echo");
    let script = Script::exec(&echo_program);
    let gate = script.dir().join("gate");
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (master, old) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 1);

    let mut events = client(&["events", "--control", control.arg()])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let mut notes = BufReader::new(events.stderr.take().unwrap()).lines();
    // Printed once the master has the subscription: no event of the roll can be missed.
    let note = notes.next().unwrap().unwrap();
    assert_eq!(
        note,
        format!(
            "mcluster: following the events of master pid {}",
            master.pid()
        )
    );

    // The replacement waits for the gate before it becomes the echo worker.
    script.rewrite(&format!(
        "while [ ! -e '{}' ]; do sleep 0.01; done\n{}",
        gate.display(),
        exec_line(&echo_program)
    ));
    let restart = client(&["restart", "--json", "--control", control.arg()])
        .spawn()
        .unwrap();
    let mut seen = Value::Null;
    wait_until("status to show the roll", || {
        seen = status(&control.path);
        seen["rolling"] == true
            && seen["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["generation"] == 2 && w["state"] == "starting" && w["slot"] == 0)
    });
    let workers = seen["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{seen}");
    let serving = workers.iter().find(|w| w["generation"] == 1).unwrap();
    assert_eq!(serving["state"], "ready", "{seen}");
    assert_eq!(serving["pid"], old[0].pid, "{seen}");
    assert_eq!(seen["ready"], true, "{seen}");
    assert_eq!(seen["serving_generation"], 1, "{seen}");
    assert_eq!(seen["pid"], master.pid(), "{seen}");
    assert_eq!(seen["mode"], "start", "{seen}");

    std::fs::write(&gate, "").unwrap();
    let run = wait_client(restart);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.json()["outcome"], "rolled");
    master.wait_for_stderr("mcluster: rolled 1 worker to generation 2");
    let new = master.generation(2);

    let mut kinds = Vec::new();
    for line in lines.by_ref() {
        let record: Value = serde_json::from_str(&line.unwrap()).unwrap();
        kinds.push((
            record["event"].as_str().unwrap().to_owned(),
            record["generation"].as_u64(),
        ));
        if record["event"] == "roll_ended" {
            break;
        }
    }
    // The roll ends once its switch is complete: the old worker (it exits at its stop) is
    // gone or can answer nothing any more.
    let expected = [
        ("roll_started", Some(2)),
        ("worker_spawned", Some(2)),
        ("worker_ready", Some(2)),
        ("roll_ended", Some(2)),
    ];
    let mut wanted = expected.iter().peekable();
    for (kind, generation) in &kinds {
        if wanted
            .peek()
            .is_some_and(|(k, g)| k == kind && g == generation)
        {
            wanted.next();
        }
    }
    assert!(
        wanted.peek().is_none(),
        "{kinds:?}, expected in order {expected:?}"
    );
    assert!(is_alive(new[0].pid));
    // The follower ends with the master.
    assert_eq!(ctl(&control.path, &["stop"]).code(), 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.last().is_some_and(|l| l.contains("\"worker_exited\"")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l == r#"{"event":"stopping"}"#),
        "{rest:?}"
    );
    let status = events.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{:?}",
        notes.map_while(Result::ok).collect::<Vec<_>>()
    );
}

/// `stop` returns only once the master's process has exited, its workers and socket with it.
#[test]
fn stop_returns_when_the_master_is_gone() {
    let control = ControlPath::new();
    // A worker that ignores the stop signal holds the stop up for the kill timeout.
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--kill-timeout",
        "1s",
        "--control",
        control.arg(),
    ];
    let (master, workers) = Master::start_ready(&options, fixture("fixture-ignore-term"), &[], 2);
    let start = Instant::now();
    let run = ctl(&control.path, &["stop"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(run.stdout, format!("master pid {} stopped\n", master.pid()));
    // Exited (a zombie until the test reaps it), not merely stopping.
    assert!(
        stat(master.pid()).is_none_or(|s| s.state == 'Z'),
        "{:?}",
        stat(master.pid())
    );
    assert!(workers.iter().all(|w| !is_alive(w.pid)));
    assert!(!control.path.exists(), "the control socket is left");
    let run = ctl(&control.path, &["status"]);
    assert_eq!(run.code(), 1);
    assert_eq!(
        run.stderr,
        format!(
            "mcluster: error: no master at {}: no such socket\n",
            control.path.display()
        )
    );

    // --hard: no wait for the kill timeout.
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--kill-timeout",
        "60s",
        "--control",
        control.arg(),
    ];
    let (mut master, _) = Master::start_ready(&options, fixture("fixture-ignore-term"), &[], 1);
    let run = ctl(&control.path, &["stop", "--hard", "--json"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.json()["pid"], master.pid());
    assert_eq!(run.json()["exited"], true);
    assert!(stat(master.pid()).is_none_or(|s| s.state == 'Z'));
    master.wait_exit();
}

/// One master per control path: a second one is refused, naming the first; a socket left by a
/// killed master is replaced.
#[test]
fn one_master_per_control_path_and_stale_sockets_replaced() {
    let control = ControlPath::new();
    let echo_program = fixture("fixture-echo");
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (mut first, _) = Master::start_ready(&options, &echo_program, &[], 1);

    let mut second = Master::start(&options, &echo_program, &[]);
    assert_eq!(second.wait_exit_code(), 1, "{}", second.dump());
    let lines = second.stderr_lines();
    assert_eq!(
        lines,
        [format!(
            "mcluster: error: cannot make the control socket {}: master pid {} answers on it \
             (stop it first, or give this master another --control PATH)",
            control.path.display(),
            first.pid()
        )],
    );
    assert_eq!(status(&control.path)["pid"], first.pid());

    // Killed, the first master leaves its socket file: stale.
    first.signal(Signal::SIGKILL);
    first.wait_exit();
    assert!(
        std::fs::symlink_metadata(&control.path).is_ok_and(|m| m.file_type().is_socket()),
        "a killed master cannot remove its socket"
    );
    let run = ctl(&control.path, &["status"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr.contains("left from a master that was killed"),
        "{}",
        run.stderr
    );

    let (third, _) = Master::start_ready(&options, &echo_program, &[], 1);
    assert_eq!(status(&control.path)["pid"], third.pid());
    let mode = std::fs::metadata(&control.path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A stale socket that no master made is replaced too; anything else at the path is not.
    drop(third);
    let other = ControlPath::new();
    drop(UnixListener::bind(&other.path).unwrap());
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", other.arg()];
    let (fourth, _) = Master::start_ready(&options, &echo_program, &[], 1);
    assert_eq!(status(&other.path)["pid"], fourth.pid());
    drop(fourth);
    let file = ControlPath::new();
    std::fs::write(&file.path, "mine").unwrap();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", file.arg()];
    let mut refused = Master::start(&options, &echo_program, &[]);
    assert_eq!(refused.wait_exit_code(), 2, "{}", refused.dump());
    assert_eq!(std::fs::read_to_string(&file.path).unwrap(), "mine");
}

/// Without `--control`, the commands find the master started in their working directory, in a
/// 0700 directory of `$XDG_RUNTIME_DIR` that goes when the master does.
#[test]
fn the_default_control_socket_belongs_to_the_working_directory() {
    let here = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    let master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-echo"),
        &[],
    )
    .current_dir(here.path())
    .start();
    master.wait_ready(1);
    let runtime = master.tmpdir().to_owned();
    let in_dir = |dir: &Path, args: &[&str]| {
        let mut command = client(args);
        command.current_dir(dir).env("XDG_RUNTIME_DIR", &runtime);
        finish(command)
    };
    let run = in_dir(here.path(), &["status", "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert_eq!(run.json()["pid"], master.pid());

    let dir = runtime.join("mcluster");
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
    let sockets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    let name = sockets[0].file_name().unwrap().to_str().unwrap();
    assert!(
        name.len() == 21 && Path::new(name).extension().is_some_and(|e| e == "sock"),
        "{name}: 16 hex digits and .sock"
    );
    assert_eq!(
        std::fs::metadata(&sockets[0]).unwrap().mode() & 0o777,
        0o600
    );

    let run = in_dir(elsewhere.path(), &["status"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr.starts_with(&format!(
            "mcluster: error: no master runs in {}",
            elsewhere.path().canonicalize().unwrap().display()
        )) || run.stderr.starts_with(&format!(
            "mcluster: error: no master runs in {}",
            elsewhere.path().display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // The README's sample of that line has its shape: the same words around the paths.
    let readme = include_str!("../README.md").replace('\n', " ");
    let shape = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .filter(|word| !word.contains('/'))
            .map(str::to_owned)
            .collect()
    };
    let sample = readme
        .split("(`mcluster: error: no master runs in ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap();
    assert_eq!(
        shape(&format!("mcluster: error: no master runs in {sample}")),
        shape(run.stderr.trim_end()),
        "the README's sample"
    );

    let run = in_dir(here.path(), &["stop"]);
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(!dir.exists(), "the emptied control directory is left");
}

/// A client of another uid is refused: by the socket's mode, and by the master itself where
/// the mode would let it in.
#[test]
fn a_client_of_another_user_is_refused() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (master, _) = Master::start_ready(&options, fixture("fixture-echo"), &[], 1);
    let as_nobody = || {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
            .arg(mcluster())
            .args(["status", "--control", control.arg()])
            .env_remove("MCLUSTER_CONTROL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        finish(command)
    };
    let run = as_nobody();
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("permission denied"), "{}", run.stderr);

    // Opened up by hand: the master still answers only its own uid (and root).
    let dir = control.path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&control.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = as_nobody();
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("uid 65534 may not control a master of uid 0"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(status(&control.path)["pid"], master.pid());
}

/// Malformed, truncated, oversized and slow requests get an error each; 100 clients at once
/// get an answer or a busy error; the master keeps supervising and serving throughout.
#[test]
fn bad_and_many_clients_leave_the_master_unharmed() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "2", "--control", control.arg()];
    let (master, old) = Master::start_ready(&options, fixture("fixture-echo"), &[], 2);
    let port = master.port();
    let socket = control.path.clone();

    let error = error_of(&raw_request(&socket, b"not json\n", false));
    assert!(error.starts_with("malformed request: "), "{error}");
    let error = error_of(&raw_request(&socket, b"{\"command\":\"launch\"}\n", false));
    assert!(error.contains("unknown variant `launch`"), "{error}");
    let error = error_of(&raw_request(&socket, b"{\"command\":\"sta", true));
    assert!(error.starts_with("truncated request"), "{error}");
    let error = error_of(&raw_request(&socket, &vec![b'x'; 70_000], false));
    assert!(
        error.starts_with("request too long: more than 65536 bytes"),
        "{error}"
    );
    let error = error_of(&raw_request(
        &socket,
        b"{\"command\":\"resize\",\"size\":0}\n",
        false,
    ));
    assert!(error.contains("size 0"), "{error}");

    // 100 clients that send nothing: 64 are held to the request deadline, the rest wait for
    // a place, then are held to it too.
    let start = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let idle: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            let answered = Arc::clone(&answered);
            thread::spawn(move || {
                let replies = raw_request(&socket, b"", false);
                answered.fetch_add(1, Ordering::SeqCst);
                replies
            })
        })
        .collect();
    // A status request waits behind them for a place, and is answered.
    let replies = raw_request(&socket, b"{\"command\":\"status\"}\n", false);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["status"]["pid"], master.pid(), "{replies:?}");

    // Meanwhile the supervision loop works: the workers serve, and a roll by signal completes.
    assert_eq!(echo(port, "busy?").generation, 1);
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr_after(mark, "mcluster: rolled 2 workers to generation 2");

    let replies: Vec<String> = idle
        .into_iter()
        .map(|client| error_of(&client.join().unwrap()))
        .collect();
    assert!(
        replies.iter().all(|e| e == "no complete request within 5s"),
        "{replies:?}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 100);
    // At most 64 were held at once: the others waited for a place first.
    assert!(start.elapsed() >= Duration::from_secs(10));

    // 100 status requests at once: every one answered.
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            thread::spawn(move || raw_request(&socket, b"{\"command\":\"status\"}\n", false))
        })
        .collect();
    for client in clients {
        let replies = client.join().unwrap();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["status"]["pid"], master.pid(), "{replies:?}");
    }
    let now = status(&socket);
    assert_eq!(now["ready"], true, "{now}");
    assert_eq!(now["serving_generation"], 2, "{now}");
    assert!(old.iter().all(|w| !is_alive(w.pid)) || !pids(&old).is_empty());
    assert_eq!(echo(port, "fine").generation, 2);
}

/// A client the master refuses before reading its whole request (too long, busy) gets the
/// reply and then the end of the connection: its write completes and its read ends cleanly.
/// The master closed with the request unread, which is a reset: the write failed with "broken
/// pipe" before the reply could be read, or the read after the reply with "connection reset".
#[test]
fn a_refused_client_reads_why_and_no_reset() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (_master, _) = Master::start_ready(&options, fixture("fixture-echo"), &[], 1);
    // Far more than a socket buffer: the master refuses before the client has written it.
    let refused = |request: &[u8], what: &str| -> String {
        let mut stream = UnixStream::connect(&control.path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        if let Err(e) = stream.write_all(request) {
            panic!("{what}: the request could not be written: {e}");
        }
        let mut replies = String::new();
        if let Err(e) = stream.read_to_string(&mut replies) {
            panic!("{what}: {e} after {replies:?}");
        }
        let replies: Vec<Value> = replies
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        error_of(&replies)
    };
    let error = refused(&vec![b'x'; 4 << 20], "too long");
    assert!(error.starts_with("request too long: "), "{error}");
    // Every follower's place taken: one more is refused after its request line, the rest of
    // what it sends unread.
    let followers: Vec<_> = (0..MAX_FOLLOWERS).map(|_| follow(&control.path)).collect();
    let mut request = b"{\"command\":\"events\"}\n".to_vec();
    request.extend(vec![b'x'; 4 << 20]);
    let error = refused(&request, "busy");
    assert!(error.starts_with("busy: "), "{error}");
    drop(followers);
}

/// A raw `events` client, its `following` reply read.
fn follow(socket: &Path) -> BufReader<UnixStream> {
    let stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    (&stream).write_all(b"{\"command\":\"events\"}\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(reply["following"], true, "{reply}");
    reader
}

/// The number of threads of process `pid`.
fn threads(pid: i32) -> usize {
    usize::try_from(proc_status(pid, "Threads:")).unwrap()
}

/// The lines a follower reads until the master closes the connection (which must come).
fn to_end(mut follower: BufReader<UnixStream>) -> Vec<Value> {
    let mut replies = Vec::new();
    loop {
        let mut line = String::new();
        match follower.read_line(&mut line) {
            Ok(0) => return replies,
            Ok(_) => replies
                .push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))),
            Err(e) => panic!(
                "the connection did not end ({e}) after {} lines",
                replies.len()
            ),
        }
    }
}

/// Followers have places of their own: with every one of them taken (and one more refused
/// with one line), `status`, `restart` and `stop` are answered as ever, and the followers see
/// the master's end.
#[test]
fn status_restart_and_stop_are_answered_whatever_the_followers() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (master, _) = Master::start_ready(&options, fixture("fixture-echo"), &[], 1);
    let followers: Vec<_> = (0..MAX_FOLLOWERS).map(|_| follow(&control.path)).collect();
    let error = error_of(&raw_request(
        &control.path,
        b"{\"command\":\"events\"}\n",
        false,
    ));
    assert!(error.starts_with("busy: "), "{error}");

    assert_eq!(status(&control.path)["pid"], master.pid());
    let run = ctl(&control.path, &["restart", "--json"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.json()["outcome"], "rolled");
    let run = ctl(&control.path, &["stop"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.stdout, format!("master pid {} stopped\n", master.pid()));
    for follower in followers {
        let records = to_end(follower);
        assert!(
            records.iter().any(|r| r["event"] == "roll_ended"),
            "{records:?}"
        );
        assert!(
            records
                .last()
                .is_some_and(|r| r["event"] == "worker_exited"),
            "{records:?}"
        );
    }
}

/// A worker that sends 100 notify messages for each connection, then answers `sent`.
const NOTIFY_BURSTS: &str = r#"
import os, socket
listener = socket.socket(fileno=3)
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", address)
sent = 0
while True:
    connection, _ = listener.accept()
    for _ in range(50):
        sent += 1
        notify.sendto(("X_BURST=%d %s" % (sent, "x" * 256)).encode(), address)
    connection.sendall(b"sent\n")
    connection.close()
"#;

/// A follower that does not read is dropped once its queue is full: it gets what was queued,
/// then one line saying why, then the end, while a follower that reads gets every record and
/// the master answers and supervises all along.
#[test]
fn a_follower_that_does_not_read_is_dropped() {
    let control = ControlPath::new();
    let dir = TempDir::new().unwrap();
    let program = dir.path().join("bursts.py");
    std::fs::write(&program, NOTIFY_BURSTS).unwrap();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (master, workers) = Master::start_ready(
        &options,
        crate::support::python3(),
        &[program.to_str().unwrap()],
        1,
    );
    let port = master.port();
    let stalled = follow(&control.path);
    let mut reader = follow(&control.path);
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let reading = thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|read| read > 0) {
            let record: Value = serde_json::from_str(&line).unwrap();
            if let Some(burst) = record["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("X_BURST="))
            {
                let number = burst.split(' ').next().unwrap().parse().unwrap();
                counted.store(number, Ordering::SeqCst);
            }
            line.clear();
        }
    });
    // Far more than the stalled follower's queue (256) and its socket's buffer hold, in bursts
    // of 50: fewer than the 64 notify messages the master keeps of a worker between two turns
    // of its loop (it drops the rest, on a loaded machine too), so that none is lost before it
    // reaches the followers.
    let mut stalled = Some(stalled);
    let mut stalled_read = None;
    for burst in 1..=12 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "sent\n");
        // The follower that reads keeps up: it has each burst before the next.
        master.wait_until("the reading follower to get the burst", || {
            seen.load(Ordering::SeqCst) >= burst * 50
        });
        // 500 records were handed to the stalled follower's queue (256) with at most 16 KiB
        // asked for its socket (32 KiB granted, under 128 records of over 256 bytes): it
        // overflowed. It is read from now on, not after the last burst: its oldest write has
        // waited since the first burst, and the master ends a write that makes no progress for
        // 10 s without the last line, which a loaded machine could reach by the last burst.
        if burst == 10 {
            let stalled = stalled.take().unwrap();
            stalled_read = Some(thread::spawn(move || to_end(stalled)));
        }
    }
    // Asked on a raw connection (no client process to start): the stalled follower is read
    // next, well within the 10 s the master gives a write.
    let replies = raw_request(&control.path, b"{\"command\":\"status\"}\n", false);
    assert_eq!(replies[0]["status"]["pid"], master.pid(), "{replies:?}");

    let records = stalled_read.unwrap().join().unwrap();
    let (last, records) = records.split_last().unwrap();
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["error"].as_str().unwrap().starts_with("dropped: "),
        "{last}"
    );
    let bursts = records
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("X_BURST="))
        })
        .count();
    assert!(bursts < 600, "{bursts} of 600 records");

    // The master still supervises: a killed worker is replaced.
    let victim = workers[0].pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    master.wait_until("a ready replacement of the killed worker", || {
        let now = status(&control.path);
        now["ready"] == true && now["workers"][0]["pid"] != victim
    });
    assert_eq!(ctl(&control.path, &["stop"]).code(), 0);
    reading.join().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 600);
}

/// The master's thread count does not depend on its control clients: followers and clients
/// still sending their request are tasks of one loop, not threads.
#[test]
fn control_clients_cost_the_master_no_thread() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()];
    let (master, _) = Master::start_ready(&options, fixture("fixture-echo"), &[], 1);
    let first = follow(&control.path);
    let before = threads(master.pid());
    let followers: Vec<_> = (0..MAX_FOLLOWERS / 2)
        .map(|_| follow(&control.path))
        .collect();
    // Connected and never sending their request: each is being read.
    let idle: Vec<_> = (0..MAX_REQUESTS / 4)
        .map(|_| UnixStream::connect(&control.path).unwrap())
        .collect();
    // Answered after the connections above were accepted (a place each: a quarter of them).
    assert_eq!(status(&control.path)["pid"], master.pid());
    let after = threads(master.pid());
    assert!(
        after <= before + 2,
        "{before} threads with 1 client, {after} with {}",
        1 + followers.len() + idle.len()
    );
    drop((first, followers, idle));
}

/// A sample of the Prometheus text format: the metric's name, its labels, its value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition format strictly enough to catch malformed output:
/// every sample's metric has a `# TYPE` line before it, labels are `name="value"` pairs.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end in }");
                let labels = labels
                    .split(',')
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').expect("label=\"value\"");
                        let value = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("a quoted label value");
                        (key.to_owned(), value.to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|kind| kind == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        samples.push((name.to_owned(), labels, value));
    }
    (types, samples)
}

fn scrape(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// `--metrics` serves the Prometheus text format; the numbers follow the master.
// The values compared are small whole numbers, exact in an f64.
#[allow(clippy::float_cmp)]
#[test]
fn metrics_are_scraped_and_parsed() {
    let control = ControlPath::new();
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--control",
        control.arg(),
    ];
    let (master, _) = Master::start_ready(&options, fixture("fixture-echo"), &[], 2);
    let line = master.wait_for_stderr("mcluster: metrics on http://");
    let addr = line
        .strip_prefix("mcluster: metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap()
        .to_owned();
    let value = |samples: &[Sample], name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name && label.is_none_or(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in {samples:?}"))
            .2
    };

    let (head, body) = scrape(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let (types, samples) = parse_prometheus(&body);
    for (name, kind) in &types {
        assert!(name.starts_with("mcluster_"), "{name}");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }
    assert_eq!(
        value(&samples, "mcluster_workers", Some(("state", "ready"))),
        2.0
    );
    assert_eq!(
        value(&samples, "mcluster_workers", Some(("state", "starting"))),
        0.0
    );
    assert_eq!(value(&samples, "mcluster_size", None), 2.0);
    assert_eq!(value(&samples, "mcluster_rolls_started_total", None), 0.0);
    assert_eq!(
        value(
            &samples,
            "mcluster_worker_restarts_total",
            Some(("slot", "1"))
        ),
        0.0
    );
    assert!(value(&samples, "mcluster_master_resident_memory_bytes", None) > 1e6);

    assert_eq!(ctl(&control.path, &["restart"]).code(), 0);
    // A crash: the slot's restart counter goes up once the replacement runs.
    echo(master.port(), "exit 1");
    let (_, body) = scrape(&addr, "/metrics");
    let (types, samples) = parse_prometheus(&body);
    assert_eq!(value(&samples, "mcluster_rolls_started_total", None), 1.0);
    assert_eq!(value(&samples, "mcluster_rolls_completed_total", None), 1.0);
    assert_eq!(value(&samples, "mcluster_rolls_aborted_total", None), 0.0);
    assert_eq!(value(&samples, "mcluster_last_roll_generation", None), 2.0);
    assert!(value(&samples, "mcluster_last_roll_duration_seconds", None) >= 0.0);
    // The README's sample: each of its series is served, in the same order, and it shows
    // every family served.
    let readme = include_str!("../README.md");
    let sample = readme
        .split("### Metrics")
        .nth(1)
        .and_then(|rest| rest.split("```text\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let sample: String = sample
        .lines()
        .filter(|line| *line != "…")
        .collect::<Vec<_>>()
        .join("\n");
    let (_, shown) = parse_prometheus(&format!(
        "{}\n{sample}\n",
        types
            .iter()
            .map(|(name, kind)| format!("# TYPE {name} {kind}"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let series =
        |(name, labels, _): &Sample| (name.clone(), labels.keys().cloned().collect::<Vec<_>>());
    let served: Vec<_> = samples.iter().map(series).collect();
    let mut at = 0;
    for shown in shown.iter().map(series) {
        let found = served[at..].iter().position(|s| *s == shown);
        assert!(
            found.is_some(),
            "the README's {shown:?} is not served in its place: {served:?}"
        );
        at += found.unwrap();
    }
    for family in types.keys() {
        assert!(
            shown
                .iter()
                .any(|(name, _, _)| name.starts_with(family.as_str())),
            "the README's sample has no {family}"
        );
    }
    wait_until("the roll to be in the duration histogram", || {
        let (_, body) = scrape(&addr, "/metrics");
        let (_, samples) = parse_prometheus(&body);
        value(&samples, "mcluster_roll_duration_seconds_count", None) == 1.0
            && value(
                &samples,
                "mcluster_roll_duration_seconds_bucket",
                Some(("le", "+Inf")),
            ) == 1.0
            && value(
                &samples,
                "mcluster_roll_duration_seconds_bucket",
                Some(("le", "300")),
            ) == 1.0
    });
    wait_until("a restart to be counted", || {
        let (_, body) = scrape(&addr, "/metrics");
        let (_, samples) = parse_prometheus(&body);
        samples
            .iter()
            .any(|(n, _, v)| n == "mcluster_worker_restarts_total" && *v == 1.0)
    });

    let (head, _) = scrape(&addr, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A client that sends nothing and one that sends garbage do not stop the next scrape.
    let _silent = TcpStream::connect(&addr).unwrap();
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage.write_all(&[0xff; 100]).unwrap();
    let (head, _) = scrape(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
}

/// Client commands given bad input, or no master: one line, a non-zero status.
#[test]
fn client_errors_are_one_line() {
    let control = ControlPath::new();
    for (args, code, needle) in [
        (&["resize", "0"][..], 2, "invalid value '0' for '<N>'"),
        (&["resize", "x"], 2, "invalid value 'x' for '<N>'"),
        (&["status"], 1, "no master at"),
        (&["restart"], 1, "no master at"),
        (&["stop"], 1, "no master at"),
        (&["events"], 1, "no master at"),
    ] {
        let run = ctl(&control.path, args);
        assert_eq!(run.code(), code, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("mcluster: error: "),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    let run = finish(client(&[
        "start",
        "-l",
        "127.0.0.1:0",
        "--metrics",
        "unix:/x",
        "--control",
        control.arg(),
        "--",
        "/bin/true",
    ]));
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(run.stderr.contains("unix:/x"), "{}", run.stderr);
    assert!(!control.path.exists());
}

/// `mcluster completions SHELL` and `mcluster man` come from the command definitions.
#[test]
fn completions_and_man_pages_are_generated() {
    let run = finish(client(&["completions", "bash"]));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run.stdout.contains("restart"), "{}", run.stdout);
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("mcluster.bash");
    std::fs::write(&script, &run.stdout).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = finish(client(&["completions", shell]));
        assert_eq!(run.code(), 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("control"), "{shell}");
    }

    let run = finish(client(&["man"]));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run.stdout.contains(".TH mcluster 1"), "{}", run.stdout);
    assert!(
        run.stdout.contains("mcluster\\-status(1)"),
        "{}",
        run.stdout
    );
    // No page links one that is never written (clap's `help` command has none).
    assert!(!run.stdout.contains("mcluster\\-help"), "{}", run.stdout);
    // A directory that does not exist yet is made; each page written is named.
    let pages = dir.path().join("share/man/man1");
    let run = finish(client(&["man", "--dir", pages.to_str().unwrap()]));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let page = std::fs::read_to_string(pages.join("mcluster-status.1")).unwrap();
    assert!(page.contains("\\-\\-ready"), "{page}");
    let mut written: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|entry| {
            format!(
                "mcluster: wrote {}",
                entry.unwrap().path().to_str().unwrap()
            )
        })
        .collect();
    written.sort();
    let mut said: Vec<String> = run.stderr.lines().map(str::to_owned).collect();
    said.sort();
    assert_eq!(said, written);
    assert!(written.len() > 10, "{written:?}");
    let index = std::fs::read_to_string(pages.join("mcluster.1")).unwrap();
    for name in ["status", "resize", "man"] {
        assert!(index.contains(&format!("mcluster\\-{name}(1)")), "{index}");
    }
    assert!(!index.contains("mcluster\\-help"), "{index}");
    assert!(!pages.join("mcluster-help.1").exists());
}

/// Issue 16, item 6: `mcluster resize 3` waiting for a slot that never gets ready is answered
/// when `resize 2` supersedes it, naming the size that won; the later one waits for its own.
#[test]
fn a_superseded_resize_says_so_and_names_the_size_that_won() {
    let control = ControlPath::new();
    let script = Script::new(&format!(
        "if [ \"$MCLUSTER_WORKER_ID\" = 2 ]; then {}; fi\n{}",
        exec_line(&fixture("fixture-never-ready")),
        exec_line(&fixture("fixture-echo"))
    ));
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--ready",
        "notify",
        "--control",
        control.arg(),
    ];
    let (master, _) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 2);
    let mut first = client(&["resize", "3", "--control", control.arg()]);
    let first = first.spawn().expect("spawn the client");
    master.wait_for_stderr("mcluster: resizing to 3 workers");
    let second = ctl(&control.path, &["resize", "2"]);
    assert_eq!(second.code(), 0, "{}{}", second.stderr, master.dump());
    assert_eq!(second.stdout, "resized to 2 workers\n");
    let first = wait_client(first);
    assert_eq!(first.code(), 1, "{}{}", first.stderr, master.dump());
    assert_eq!(
        first.stderr,
        "mcluster: error: the resize to 3 workers was superseded: a later resize to 2 workers won\n"
    );
}

/// Issue 21, item 4: `mcluster resize N` returns once every slot of the new size has a ready
/// worker (not before: a slot that is not ready holds it up), as `restart` waits for its roll;
/// `--no-wait` returns as soon as the master has taken the size.
#[test]
fn resize_waits_for_the_new_size_to_be_ready_unless_told_not_to() {
    let control = ControlPath::new();
    let gates = TempDir::new().unwrap();
    let gate = gates.path().join("open");
    // Slots from 2 on get ready only once the gate exists.
    let script = Script::new(&format!(
        "if [ \"$MCLUSTER_WORKER_ID\" -ge 2 ]; then while [ ! -e {} ]; do sleep 0.02; done; fi\n{}",
        crate::support::script::quote(&gate),
        exec_line(&fixture("fixture-echo"))
    ));
    let options = ["-l", "127.0.0.1:0", "-n", "2", "--control", control.arg()];
    let (master, _) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 2);

    let mut resize = client(&["resize", "3", "--control", control.arg()]);
    let mut resize = resize.spawn().expect("spawn the client");
    master.wait_for_stderr("mcluster: resizing to 3 workers");
    // The master has spawned w2, which waits for the gate: the client still waits.
    wait_until("w2 to be in the status", || {
        status(&control.path)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["slot"] == 2)
    });
    assert!(
        resize.try_wait().unwrap().is_none(),
        "resize returned before w2 was ready\n{}",
        master.dump()
    );
    std::fs::write(&gate, "").unwrap();
    let run = wait_client(resize);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.stdout, "resized to 3 workers\n");
    let now = status(&control.path);
    assert_eq!(
        (now["size"].as_u64(), now["ready"].as_bool()),
        (Some(3), Some(true)),
        "{now}"
    );

    // With the gate shut, w3 cannot get ready: --no-wait returns all the same.
    std::fs::remove_file(&gate).unwrap();
    let run = ctl(&control.path, &["resize", "4", "--no-wait"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    assert_eq!(run.stdout, "resizing to 4 workers\n");
    let now = status(&control.path);
    assert_eq!(now["size"].as_u64(), Some(4), "{now}");
    assert_eq!(now["ready"].as_bool(), Some(false), "{now}");
    let run = ctl(&control.path, &["resize", "2", "--no-wait", "--json"]);
    assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
    let reply = run.json();
    assert!(
        ["taken", "resized"].contains(&reply["outcome"].as_str().unwrap()),
        "{reply}"
    );
}

/// Issue 16, item 10: sizes beyond the bound are refused with one line, by the command line,
/// `mcluster resize` and the control socket, and the master goes on unharmed.
#[test]
fn sizes_beyond_the_bound_are_refused_with_one_line() {
    for args in [
        &[
            "start",
            "-n",
            "9223372036854775807",
            "-l",
            "127.0.0.1:0",
            "--",
            "true",
        ][..],
        &["start", "-n", "2049", "-l", "127.0.0.1:0", "--", "true"],
        &["resize", "18446744073709551615"],
    ] {
        let run = finish(client(args));
        assert_eq!(run.code(), 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("mcluster: error: ")
                && run.stderr.contains("at most 2048 workers")
                && run.stderr.lines().count() == 1,
            "{args:?}: {}",
            run.stderr
        );
    }
    let mut env = client(&["start", "-l", "127.0.0.1:0", "--", "true"]);
    env.env("MCLUSTER_SIZE", "100000");
    let run = finish(env);
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("at most 2048 workers"),
        "{}",
        run.stderr
    );

    let control = ControlPath::new();
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1", "--control", control.arg()],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let error = error_of(&raw_request(
        &control.path,
        b"{\"command\":\"resize\",\"size\":18446744073709551615}\n",
        false,
    ));
    assert!(
        error.starts_with("invalid size 18446744073709551615: at most "),
        "{error}"
    );
    assert_eq!(status(&control.path)["size"], 1, "{}", master.dump());
}

/// `mcluster restart` answers once the switch is complete: a request made right after it is
/// always answered by the new generation, even by workers that go on accepting for 200 ms
/// after SIGTERM (as apps that stop at their next loop turn do).
#[test]
fn after_restart_answers_every_fresh_request_gets_the_new_generation() {
    let control = ControlPath::new();
    let options = ["-l", "127.0.0.1:0", "-n", "2", "--control", control.arg()];
    let master = Master::builder(&options, fixture("fixture-echo"), &[])
        .env("ECHO_ACCEPT_AFTER_TERM_MS", "200")
        .start();
    master.wait_ready(2);
    let port = master.port();
    for generation in 2..=4 {
        let run = ctl(&control.path, &["restart"]);
        assert_eq!(run.code(), 0, "{}{}", run.stderr, master.dump());
        for _ in 0..20 {
            let reply = crate::support::net::request(port, "ping");
            assert!(
                reply.contains(&format!(" gen={generation} ")),
                "after the restart to generation {generation}: {reply}{}",
                master.dump()
            );
        }
    }
}
