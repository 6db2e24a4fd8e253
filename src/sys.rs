//! The only module allowed `unsafe`: fork/exec, fd placement, adopting inherited fds, the guard
//! that kills every worker's process group when the master dies.

mod fd;
#[cfg(feature = "master")]
mod guard;
#[cfg(feature = "master")]
mod platform;
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
pub(crate) use spawn::{Program, SpawnRequest, prepare_child, spawn_worker};
