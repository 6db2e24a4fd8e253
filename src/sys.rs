//! The only module allowed `unsafe`: fork/exec, fd placement, adopting inherited fds, the guard
//! that kills every worker's process group when the master dies, the reuseport steering calls,
//! the kernel's socket diagnostics (no `unsafe` there but in a test), the state of a worker's
//! connection read through a duplicate of its fd.

mod fd;
#[cfg(feature = "master")]
mod guard;
#[cfg(feature = "master")]
mod platform;
#[cfg(feature = "master")]
mod reuseport;
#[cfg(feature = "master")]
mod sock_diag;
#[cfg(all(feature = "master", target_os = "linux"))]
mod socket_state;
#[cfg(feature = "master")]
mod spawn;

#[cfg(feature = "channel")]
pub(crate) use fd::adopt_channel;
pub(crate) use fd::{AdoptedListener, adopt_listener, claim_inherited_fds};
#[cfg(feature = "master")]
pub(crate) use guard::{CAPACITY as GUARD_CAPACITY, Guard};
#[cfg(feature = "master")]
pub(crate) use platform::{blind_file_system, peer_uid, pipe, stream_socket};
#[cfg(feature = "master")]
pub(crate) use reuseport::{accept_queue, attach_steering, detach_steering, refuse_connections};
#[cfg(all(test, feature = "master", target_os = "linux"))]
pub(crate) use sock_diag::tests::wait_until_sending_is_old;
#[cfg(feature = "master")]
pub(crate) use sock_diag::{
    Family, accepted_connection_among, accepted_connections, held_request_in_progress, tcp_address,
};
#[cfg(feature = "master")]
pub(crate) use spawn::{Forked, Program, SpawnRequest, fork_worker, prepare_child};

/// Runs the test `name` of this test binary again, alone, in a child under the seccomp fixture
/// `fixture` (a script of `fixtures/` that installs a filter, then runs its arguments), with
/// the variable `marker` set so that the test knows where it runs; panics unless it passed
/// there.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn rerun_test_under_seccomp(fixture: &str, name: &str, marker: &str) {
    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    let output = std::process::Command::new("python3")
        .arg(helper)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(marker, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
