//! The dev master's HTTP servers (live-reload channel, building page) under hostile and
//! careless clients: real sockets against a real `mcluster dev`, the master's fds counted in
//! `/proc`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{Master, MasterBuilder, fixture};

/// `mcluster dev` of one echo worker with live reload on a free port, rebuilding with `build`
/// on every change in `dir`; returns it once its worker is ready, with the live-reload address.
fn dev_master(dir: &Path, build: &str) -> (Master, SocketAddr) {
    dev_master_via(dir, build, None)
}

/// [`dev_master`], run through `sh -c 'ulimit -n FDS; exec …'` when `fds` is given.
fn dev_master_via(dir: &Path, build: &str, fds: Option<usize>) -> (Master, SocketAddr) {
    let worker = fixture("fixture-echo");
    let mut builder = MasterBuilder::raw(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "-n",
        "1",
        "--livereload",
        "127.0.0.1:0",
        "-w",
        dir.to_str().unwrap(),
        "--build",
        build,
        "--",
        worker.to_str().unwrap(),
    ]);
    if let Some(fds) = fds {
        let limit = format!("ulimit -n {fds} && exec \"$@\"");
        builder = builder.via("/bin/sh", &["-c", &limit, "sh"]);
    }
    let master = builder.start();
    let line = master.wait_for_stderr("mcluster: live reload on ");
    let address = line
        .strip_prefix("mcluster: live reload on ")
        .and_then(|rest| {
            rest.split(':')
                .take(2)
                .collect::<Vec<_>>()
                .join(":")
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (master, address)
}

/// How many fds the master has open.
fn fds(master: &Master) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", master.pid()))
        .unwrap()
        .count()
}

/// Sends `request` on a new connection and reads the whole response.
fn exchange(address: SocketAddr, request: &str) -> String {
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = socket.read_to_string(&mut response);
    response
}

fn events_request(origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |origin| format!("Origin: {origin}\r\n"));
    format!("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n{origin}\r\n")
}

/// Opens an `/events` stream and reads up to its `hello`.
fn follow(address: SocketAddr) -> BufReader<TcpStream> {
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket.write_all(events_request(None).as_bytes()).unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    while !line.starts_with("event: hello") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed before hello"
        );
    }
    reader
}

/// 300 pages that open the stream and never read cost the master a bounded number of fds, and
/// the script is still served beside them.
#[test]
fn never_read_streams_cost_at_most_100_fds_and_the_script_is_answered() {
    let dir = TempDir::new().unwrap();
    let (master, live) = dev_master(dir.path(), "true");
    master.wait_for_stderr(&crate::support::all_ready(1));
    let before = fds(&master);
    let mut pages = Vec::new();
    for _ in 0..300 {
        let mut page = TcpStream::connect(live).unwrap();
        page.write_all(events_request(None).as_bytes()).unwrap();
        pages.push(page);
    }
    // Connections are accepted in order: once this one is answered, the 300 were accepted.
    let script = exchange(
        live,
        "GET /livereload.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    assert!(script.starts_with("HTTP/1.1 200"), "{script}");
    let during = fds(&master);
    eprintln!(
        "300 never-read streams: the master holds {during} fds ({before} before them, +{})",
        during.saturating_sub(before)
    );
    assert!(
        during <= before + 100,
        "300 streams cost {} fds\n{}",
        during - before,
        master.dump()
    );
}

/// A page that connects and leaves, 500 times: no fd of the master stays behind.
#[test]
fn streams_closed_by_their_pages_leave_no_fd_behind() {
    let dir = TempDir::new().unwrap();
    let (master, live) = dev_master(dir.path(), "true");
    master.wait_for_stderr(&crate::support::all_ready(1));
    let before = fds(&master);
    for _ in 0..500 {
        drop(follow(live));
    }
    master.wait_until("the master to close the streams its pages closed", || {
        fds(&master) <= before
    });
    eprintln!(
        "500 streams opened and closed: the master holds {} fds ({before} before them)",
        fds(&master)
    );
}

/// A page of another origin cannot read the stream (no `Access-Control-Allow-Origin` for it:
/// refused); the app's own origin can; a name that is not the master's is refused.
#[test]
fn only_the_app_s_own_pages_may_read_the_stream() {
    let dir = TempDir::new().unwrap();
    let (master, live) = dev_master(dir.path(), "true");
    master.wait_for_stderr(&crate::support::all_ready(1));
    let app = format!("http://127.0.0.1:{}", master.port());
    for foreign in [
        "http://evil.example",
        "http://127.0.0.1:1",
        "null",
        &format!("http://evil.example:{}", master.port()),
    ] {
        let response = exchange(live, &events_request(Some(foreign)));
        assert!(
            response.starts_with("HTTP/1.1 403"),
            "{foreign}: {response}"
        );
        assert!(
            !response
                .to_ascii_lowercase()
                .contains("access-control-allow-origin"),
            "{foreign}: {response}"
        );
        assert!(!response.contains("event: hello"), "{response}");
    }
    let mut own = TcpStream::connect(live).unwrap();
    own.write_all(events_request(Some(&app)).as_bytes())
        .unwrap();
    let mut reader = BufReader::new(own);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {app}\r\n")),
        "{head}"
    );
    let rebound = exchange(
        live,
        &format!(
            "GET /events HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n",
            live.port()
        ),
    );
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    assert!(!rebound.contains("event: hello"), "{rebound}");
}

/// While the first build runs, the building page answers its own names only (not a rebound
/// DNS name), and a request that comes after the workers started is redirected to its own
/// path on its own host, never to `//elsewhere`.
#[test]
fn the_building_page_refuses_other_hosts_and_redirects_to_its_own_path_only() {
    let dir = TempDir::new().unwrap();
    let gate = dir.path().join("gate");
    let build = format!(
        "while [ ! -f {} ]; do sleep 0.05; done",
        crate::support::script::quote(&gate)
    );
    let (master, _) = dev_master(dir.path(), &build);
    let app = SocketAddr::from(([127, 0, 0, 1], master.port()));
    let rebound = exchange(app, "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    assert!(!rebound.contains("building"), "{rebound}");
    // Accepted while building (the page answered after it proves it), asked only later.
    let mut late = TcpStream::connect(app).unwrap();
    let page = exchange(
        app,
        &format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", app.port()),
    );
    assert!(
        page.starts_with("HTTP/1.1 503") && page.contains("building"),
        "{page}"
    );
    std::fs::write(&gate, "").unwrap();
    master.wait_for_stderr(&crate::support::all_ready(1));
    late.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    late.write_all(
        format!(
            "GET //evil.example/x HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            app.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut response = String::new();
    let _ = late.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 307"), "{response}");
    let location = response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Location in {response}"));
    assert_eq!(
        location,
        format!("http://localhost:{}//evil.example/x", app.port())
    );
}

/// A page connected with a small receive window that never reads.
fn stalled_page(live: SocketAddr) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &2048).unwrap();
    let SocketAddr::V4(v4) = live else {
        panic!("not IPv4: {live}")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
    let mut socket = TcpStream::from(fd);
    socket.write_all(events_request(None).as_bytes()).unwrap();
    socket.into()
}

/// With 8 pages that never read and builds that fail with long diagnostics, the master keeps
/// supervising: every failed build is reported, and a worker killed (SIGKILL) right after a
/// failed build is replaced, though no page ever reads a byte (a master that waited for them
/// would do neither). How long each took is printed, not asserted: the timed target is the
/// benchmark's; `dev::pages_that_never_read_do_not_hold_up_replacing_a_worker_after_broken_builds`
/// also rules out a wait with a bound, with pages that read at the end.
#[test]
fn pages_that_never_read_do_not_hold_up_the_master() {
    let dir = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    let broken = outside.path().join("broken");
    let build = format!(
        "if [ -f {broken} ]; then i=0; while [ $i -lt 1000 ]; do \
         echo \"error[E0308]: mismatched types in line $i of a long diagnostic, over and over\" >&2; \
         i=$((i+1)); done; echo \"error: the end of build $(ls {dir} | wc -l)\" >&2; exit 1; fi",
        broken = crate::support::script::quote(&broken),
        dir = crate::support::script::quote(dir.path()),
    );
    let (master, live) = dev_master(dir.path(), &build);
    master.wait_for_stderr(&crate::support::all_ready(1));
    let _pages: Vec<_> = (0..8).map(|_| stalled_page(live)).collect();
    std::fs::write(&broken, "").unwrap();
    let mut mark = master.stderr_mark();
    // Enough failed builds for the master's socket buffers to the pages to fill, whatever
    // they grew to (on loopback, over a MiB).
    let rounds = 32;
    for round in 0..rounds {
        std::fs::write(dir.path().join(format!("{round}.rs")), "").unwrap();
        // The build's last line: it is ending, and the master is about to tell the pages.
        let last = format!("error: the end of build {}", round + 1);
        mark = master.wait_for_stderr_after(mark, &last).0;
        // The worker killed as the build ends, in the first and the last rounds (a crash loop's
        // backoff would add its own delays in every round).
        let killed = (round == 0 || round == rounds - 1).then(|| {
            let worker = crate::support::echo(master.port(), "x").pid;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(worker),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            (worker, Instant::now())
        });
        mark = master.wait_for_stderr_after(mark, "build failed").0;
        let timed = master.stderr_timed();
        let at = |needle: &str| {
            timed
                .iter()
                .rev()
                .find(|(_, line)| line.contains(needle))
                .map(|(at, _)| *at)
                .unwrap()
        };
        let held = at("build failed").duration_since(at(&last));
        eprintln!("round {round}: the failed build reported {held:?} after its end");
        if let Some((worker, killed)) = killed {
            // The connection waits in the listener's backlog until the replacement accepts it.
            let replacement = crate::support::echo(master.port(), "y").pid;
            assert_ne!(replacement, worker, "{}", master.dump());
            eprintln!(
                "round {round}: the worker replaced {:?} after its kill",
                killed.elapsed()
            );
        }
    }
}

/// CPU time the process `pid` used so far (user and system), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// At its fd limit, with clients waiting to be accepted, the master does not spin: its accept
/// loop waits between failed accepts.
#[test]
fn waiting_connections_at_the_fd_limit_cost_little_cpu() {
    const LIMIT: usize = 40;
    const CLIENTS: usize = 60;
    let dir = TempDir::new().unwrap();
    let (master, live) = dev_master_via(dir.path(), "true", Some(LIMIT));
    master.wait_for_stderr(&crate::support::all_ready(1));
    // Clients that connect and say nothing: more than the master has fds for.
    let _clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(live).unwrap())
        .collect();
    // Admission alone leaves `CLIENTS - 32` waiting; more wait only when accepts fail. (Counting
    // the master's fds cannot tell: a thread blocked in accept(2) holds a free fd number.)
    let admitted = 32;
    master.wait_until("the master to reach its fd limit", || {
        crate::support::net::accept_queue(live.port())
            .is_some_and(|waiting| waiting > CLIENTS - admitted)
    });
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap();
    let ticks_per_second = u64::try_from(ticks_per_second).unwrap();
    let (start, ticks) = (Instant::now(), cpu_ticks(master.pid()));
    // Measured over a while (not a condition to wait for: the CPU used over a span of time).
    while start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let used = cpu_ticks(master.pid()) - ticks;
    let (used, ticks_per_second) = (
        u32::try_from(used).unwrap(),
        u32::try_from(ticks_per_second).unwrap(),
    );
    let share = f64::from(used) / (start.elapsed().as_secs_f64() * f64::from(ticks_per_second));
    eprintln!(
        "at its fd limit ({LIMIT}) with {CLIENTS} clients waiting: the master used {:.1} % of a \
         core",
        share * 100.0
    );
    assert!(
        share < 0.2,
        "the master used {:.0} % of a core at its fd limit\n{}",
        share * 100.0,
        master.dump()
    );
}

/// Scrapes are answered while slow clients hold connections to the metrics endpoint.
#[test]
fn metrics_are_scraped_while_slow_clients_hold_connections() {
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1", "--metrics", "127.0.0.1:0"],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let line = master.wait_for_stderr("mcluster: metrics on http://");
    let address: SocketAddr = line
        .strip_prefix("mcluster: metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut slow = Vec::new();
    for _ in 0..24 {
        let mut client = TcpStream::connect(address).unwrap();
        client.write_all(b"GET /metr").unwrap();
        slow.push(client);
    }
    let scrape = exchange(
        address,
        &format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n"),
    );
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("mcluster_size 1"), "{scrape}");
}
