//! mcluster runs a cluster of worker processes on shared listening sockets.
#![cfg(unix)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod listener;
pub mod master;
pub mod worker;

mod notify;
mod output;
mod supervisor;
#[allow(unsafe_code)]
mod sys;
