//! The only module allowed `unsafe`: fork/exec, fd placement, adopting inherited fds, the guard
//! that kills every worker's process group when the master dies, the reuseport steering calls.

mod fd;
#[cfg(feature = "master")]
mod guard;
#[cfg(feature = "master")]
mod platform;
#[cfg(feature = "master")]
mod reuseport;
// Until the driver waits for draining workers' requests (issue 19), only the tests use it.
#[cfg(feature = "master")]
#[allow(dead_code)]
mod sock_diag;
#[cfg(feature = "master")]
mod spawn;

pub(crate) use fd::{AdoptedListener, adopt_listener, claim_inherited_fds};
#[cfg(feature = "master")]
pub(crate) use guard::{CAPACITY as GUARD_CAPACITY, Guard};
#[cfg(feature = "master")]
pub(crate) use platform::{blind_file_system, peer_uid, pipe, stream_socket};
#[cfg(feature = "master")]
#[allow(unused_imports)]
pub(crate) use reuseport::{AcceptQueue, accept_queue, attach_steering, detach_steering};
#[cfg(feature = "master")]
#[allow(unused_imports)]
pub(crate) use sock_diag::{InProgress, accepted_connections};
#[cfg(feature = "master")]
pub(crate) use spawn::{Program, SpawnRequest, prepare_child, spawn_worker};
