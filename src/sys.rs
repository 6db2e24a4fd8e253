//! The only module allowed `unsafe`: fork/exec, fd placement, adopting inherited fds.

mod fd;
mod spawn;

pub(crate) use fd::{AdoptedListener, adopt_listener};
pub(crate) use spawn::{SpawnRequest, spawn_worker};
