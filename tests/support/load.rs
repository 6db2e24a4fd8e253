//! Client load for tests of rolls and stops: loops of echo requests (or HTTP `GET /`), every
//! failure kept.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::Reply;
use super::net::{http_get, try_request};

/// Client loops that send echo requests until stopped, counting answers and failures.
pub(crate) struct Load {
    pub(crate) stop: AtomicBool,
    pub(crate) answered: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// The generations that answered.
    pub(crate) generations: Mutex<BTreeSet<u64>>,
    /// The pids that answered.
    pub(crate) pids: Mutex<BTreeSet<i32>>,
    /// `GET /` over HTTP instead of the echo fixture's lines.
    http: bool,
}

impl Load {
    /// Starts `loops` client threads of echo requests on `port`.
    pub(crate) fn start(port: u16, loops: usize) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        Self::start_kind(port, loops, false)
    }

    /// Starts `loops` client threads of `GET /` on `port`; a failure is anything but a
    /// `200 OK` answered in full.
    pub(crate) fn start_http(port: u16, loops: usize) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        Self::start_kind(port, loops, true)
    }

    fn start_kind(port: u16, loops: usize, http: bool) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Self {
            stop: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            generations: Mutex::new(BTreeSet::new()),
            pids: Mutex::new(BTreeSet::new()),
            http,
        });
        let threads = (0..loops)
            .map(|n| {
                let load = Arc::clone(&load);
                thread::spawn(move || load.run(port, n))
            })
            .collect();
        (load, threads)
    }

    fn run(&self, port: u16, n: usize) {
        for i in 0.. {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.http {
                match http_get(port) {
                    Ok(response) if response.starts_with("HTTP/1.1 200 OK") => {
                        self.answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(response) => self.fail(format!("GET / {n}-{i}: {response:?}")),
                    Err(e) => self.fail(format!("GET / {n}-{i}: {e}")),
                }
                continue;
            }
            let line = format!("load {n}-{i}");
            match try_request(port, &line).map(|reply| (Reply::parse(&reply), reply)) {
                Ok((Some(reply), _)) if reply.echo == line => {
                    self.generations.lock().unwrap().insert(reply.generation);
                    self.pids.lock().unwrap().insert(reply.pid);
                    self.answered.fetch_add(1, Ordering::SeqCst);
                }
                Ok((_, reply)) => self.fail(format!("{line}: wrong reply {reply:?}")),
                Err(e) => self.fail(format!("{line}: {e}")),
            }
        }
    }

    fn fail(&self, failure: String) {
        self.failures.lock().unwrap().push(failure);
    }

    /// Every failed request so far.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

/// Stops the load threads when the test ends, even by a panic.
pub(crate) struct StopOnDrop(pub(crate) Arc<Load>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}
