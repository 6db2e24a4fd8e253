//! The only module allowed `unsafe`: fork/exec, fd placement, adopting inherited fds.

mod fd;
#[cfg(feature = "master")]
mod spawn;

pub(crate) use fd::{AdoptedListener, adopt_listener, claim_inherited_fds};
#[cfg(feature = "master")]
pub(crate) use spawn::{SpawnRequest, die_with_parent, spawn_worker};
