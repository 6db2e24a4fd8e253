//! Client load for tests of rolls and stops: loops of echo requests, every failure kept.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::Reply;
use super::net::try_request;

/// Client loops that send echo requests until stopped, counting answers and failures.
pub(crate) struct Load {
    pub(crate) stop: AtomicBool,
    pub(crate) answered: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// The generations that answered.
    pub(crate) generations: Mutex<BTreeSet<u64>>,
    /// The pids that answered.
    pub(crate) pids: Mutex<BTreeSet<i32>>,
}

impl Load {
    /// Starts `loops` client threads on `port`.
    pub(crate) fn start(port: u16, loops: usize) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Self {
            stop: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            generations: Mutex::new(BTreeSet::new()),
            pids: Mutex::new(BTreeSet::new()),
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
