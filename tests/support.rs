//! What the tests share: the master harness, fixture paths, requests, process facts, scripts.

pub(crate) mod fixture;
pub(crate) mod harness;
pub(crate) mod load;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod script;
pub(crate) mod systemd;

pub(crate) use fixture::{fixture, naive_http_py, python3, strict_listen_pid_py};
pub(crate) use harness::{Master, MasterBuilder, Worker, all_ready, pids};
pub(crate) use net::{Reply, echo, echo_pid, request, wait_served_by};
pub(crate) use process::is_alive;
pub(crate) use script::Script;
