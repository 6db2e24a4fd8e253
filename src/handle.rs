//! The way into a running master: the driver's inbox and everything that comes through it
//! ([`Input`]: signals, notify wake-ups, the watcher's batches, requests), the [`Handle`] any
//! thread holds to ask, and the [`Waiter`]/[`Reply`] pair each answer travels through. The
//! servers (control socket, metrics) and the library reach the driver only through here, so
//! none of them depends on the driver or on the master's builder.

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::cluster::{ExitReason, WorkerKey};
use crate::dev::lifecycle::{BuildId, DevEvent};
use crate::status::{Record, ResizeOutcome, RestartOutcome, SendOutcome, Status};

/// The inbox's sending end: any thread may send, without blocking and without a runtime.
pub(crate) type ToDriver = UnboundedSender<Input>;

/// The inbox, read by the driver alone.
pub(crate) type Inbox = UnboundedReceiver<Input>;

/// Everything that can wake the driver.
#[derive(Debug)]
pub(crate) enum Input {
    /// A signal the master received, `count` times since the driver last handled it (at most
    /// one of each signal waits in the inbox).
    Signal { signal: i32, count: Arc<AtomicU32> },
    /// A worker's notify socket has messages (coalesced: see [`sd_notify`](crate::sd_notify)); at most one per
    /// worker waits in the inbox.
    Notify { key: WorkerKey },
    /// A worker's message channel has messages (see [`channel`](crate::channel)); at most one
    /// per worker waits in the inbox.
    Channel { key: WorkerKey },
    /// A request from the embedder's handle.
    Control(Control),
    /// Dev mode: files really changed (a debounced batch).
    Changed(Vec<PathBuf>),
    /// Dev mode: the output of this build is complete, which its outcome may wait for (see
    /// [`OUTPUT_GRACE`](crate::dev::lifecycle::OUTPUT_GRACE)); at most one per build.
    BuildOutputEnded(BuildId),
    /// Dev mode: what slow work done off the loop found for the dev core: a build's outcome
    /// or the project's directories (see [`dev`](crate::dev)); at most one per such request
    /// of the core's, which asks for one roots lookup at a time and one outcome per build.
    Found(Box<DevEvent>),
}

/// Requests from [`Handle`] (and the control socket, through one).
#[derive(Debug)]
pub(crate) enum Control {
    /// A new size; its outcome goes to the sender: the status once every slot of it has a
    /// ready worker, or superseded, or refused.
    Resize(usize, Option<Reply<ResizeOutcome>>),
    /// A roll; its outcome goes to the sender, if any.
    Roll(Option<Reply<RestartOutcome>>),
    /// A graceful stop; how the master ended goes to the sender.
    Quit(Option<Reply<ExitReason>>),
    /// A hard stop; how the master ended goes to the sender.
    QuitHard(Option<Reply<ExitReason>>),
    /// A snapshot of the master, to the sender.
    Status(Reply<Status>),
    /// Every lifecycle event from now on, to the subscriber, until it hangs up.
    Subscribe(Subscriber),
    /// A message for the worker of a slot (`None`: of every slot); the outcome goes to the
    /// sender at once.
    Send {
        slot: Option<usize>,
        message: serde_json::Value,
        reply: Reply<SendOutcome>,
    },
}

/// Where a subscriber's lifecycle events go. Sending never blocks the driver.
#[derive(Debug)]
pub(crate) enum Subscriber {
    /// The library's [`Handle::events`]: a channel the
    /// embedder's own code reads.
    Channel(SyncSender<Record>),
    /// A control socket's follower: a bounded queue. One that is full is dropped (its sender
    /// goes, so the follower sees the end), and `overflowed` says why.
    Queue(
        tokio::sync::mpsc::Sender<Record>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ),
}

impl Subscriber {
    /// Queues `record`; `false` when the subscriber is gone or was dropped for being full.
    pub(crate) fn send(&self, record: &Record) -> bool {
        match self {
            Self::Channel(sender) => sender.try_send(record.clone()).is_ok(),
            Self::Queue(queue, overflowed) => match queue.try_send(record.clone()) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    overflowed.store(true, std::sync::atomic::Ordering::Release);
                    false
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }
}

/// Controls a running [`Master`](crate::master::Master) from any thread; each call is queued for the master's loop.
#[derive(Debug, Clone)]
pub struct Handle {
    events: ToDriver,
}

impl Handle {
    /// A handle that sends to `events`, the inbox of a master's driver.
    pub(crate) fn new(events: ToDriver) -> Self {
        Self { events }
    }

    /// Sets the number of workers (at least 1, at most the bound the master computed at its
    /// start from its limits, or [`MAX_SIZE`](crate::master::MAX_SIZE)). The returned [`Waiter`] answers with
    /// [`ResizeOutcome::Resized`] and the master's status once every slot of the new size has a
    /// ready worker, [`ResizeOutcome::Superseded`] with the size that won when another size is
    /// asked for first, or [`ResizeOutcome::Refused`]; dropping it is fine.
    #[allow(clippy::must_use_candidate)]
    pub fn resize(&self, size: usize) -> Waiter<ResizeOutcome> {
        let (reply, waiter) = reply();
        let _ = self
            .events
            .send(Input::Control(Control::Resize(size, Some(reply))));
        waiter
    }

    /// Replaces every worker with one of a new generation, each old one only after its
    /// replacement is ready. The returned [`Waiter`] tells when the roll has ended and how, as
    /// `cluster-master`'s restart callback did; dropping it is fine.
    #[allow(clippy::must_use_candidate)]
    pub fn restart(&self) -> Waiter<RestartOutcome> {
        let (outcome, waiter) = reply();
        let _ = self
            .events
            .send(Input::Control(Control::Roll(Some(outcome))));
        waiter
    }

    /// Sends `message` to the worker of `slot` through its channel (`MCLUSTER_CHANNEL_FD`, a
    /// Node worker's `process.on('message')`): during a roll, to the slot's newest worker. The
    /// [`Waiter`] answers at once: [`SendOutcome::Delivered`] once the message is queued on the
    /// worker's channel, or [`SendOutcome::Failed`] with why (no worker in that slot, its
    /// channel full because it does not read, or closed); never a wait for the worker to
    /// read. `None` from it once the master has stopped.
    #[allow(clippy::must_use_candidate)]
    pub fn send(&self, slot: usize, message: serde_json::Value) -> Waiter<SendOutcome> {
        self.send_to(Some(slot), message)
    }

    /// Sends `message` to the newest worker of every slot, as [`send`](Handle::send) does to
    /// one: [`SendOutcome::Failed`] names every worker it could not be queued for (the others
    /// have it).
    #[allow(clippy::must_use_candidate)]
    pub fn broadcast(&self, message: serde_json::Value) -> Waiter<SendOutcome> {
        self.send_to(None, message)
    }

    pub(crate) fn send_to(
        &self,
        slot: Option<usize>,
        message: serde_json::Value,
    ) -> Waiter<SendOutcome> {
        let (reply, waiter) = reply();
        let _ = self.events.send(Input::Control(Control::Send {
            slot,
            message,
            reply,
        }));
        waiter
    }

    /// A snapshot of the master and its workers; `None` once the master has stopped.
    #[must_use]
    pub fn status(&self) -> Option<Status> {
        self.ask_status()?.wait()
    }

    /// Asks for a snapshot without waiting for it (for the servers on the I/O loop, which must
    /// never block); `None` once the master has stopped.
    pub(crate) fn ask_status(&self) -> Option<Waiter<Status>> {
        let (reply, answer) = reply();
        self.events
            .send(Input::Control(Control::Status(reply)))
            .ok()?;
        Some(answer)
    }

    /// Every lifecycle event from now on (workers spawned, ready, exited, notify messages,
    /// rolls), until the receiver is dropped or the master stops, or the receiver falls
    /// 4,096 records behind: the master never
    /// holds more for a follower that does not read, and ends its subscription instead.
    #[must_use]
    pub fn events(&self) -> Receiver<Record> {
        let (subscriber, records) = mpsc::sync_channel(crate::status::FOLLOWER_QUEUE);
        let _ = self
            .events
            .send(Input::Control(Control::Subscribe(Subscriber::Channel(
                subscriber,
            ))));
        records
    }

    /// As [`events`](Handle::events), through a queue of `capacity` records that never makes
    /// the master wait: when it is full, the subscription ends and the flag is set.
    pub(crate) fn follow(
        &self,
        capacity: usize,
    ) -> (
        tokio::sync::mpsc::Receiver<Record>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (queue, records) = tokio::sync::mpsc::channel(capacity);
        let overflowed = std::sync::Arc::default();
        let subscriber = Subscriber::Queue(queue, std::sync::Arc::clone(&overflowed));
        let _ = self
            .events
            .send(Input::Control(Control::Subscribe(subscriber)));
        (records, overflowed)
    }

    /// Stops gracefully: the stop signal, then SIGKILL after the kill timeout. The returned
    /// [`Waiter`] answers with how the master ended once every worker is gone (`run` returns
    /// the same, [`ExitReason::Stopped`]).
    #[allow(clippy::must_use_candidate)]
    pub fn quit(&self) -> Waiter<ExitReason> {
        self.stop(false)
    }

    /// SIGKILLs every worker; the [`Waiter`] answers as [`quit`](Handle::quit)'s does
    /// ([`ExitReason::Killed`]).
    #[allow(clippy::must_use_candidate)]
    pub fn quit_hard(&self) -> Waiter<ExitReason> {
        self.stop(true)
    }

    fn stop(&self, hard: bool) -> Waiter<ExitReason> {
        let (reply, waiter) = reply();
        let control = if hard {
            Control::QuitHard(Some(reply))
        } else {
            Control::Quit(Some(reply))
        };
        let _ = self.events.send(Input::Control(control));
        waiter
    }
}

/// The answer to a [`Handle`] request, once it is there.
pub struct Waiter<T> {
    slot: Arc<Slot<T>>,
}

impl<T> std::fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}

impl<T> Waiter<T> {
    /// Waits for the answer; `None` if the master stopped without giving one (a restart asked
    /// for while it stopped gets [`RestartOutcome::Refused`] instead). It blocks the calling
    /// thread, whichever it is (a thread of a tokio runtime too, as any blocking call does).
    #[must_use]
    pub fn wait(self) -> Option<T> {
        let mut state = self.slot.lock();
        while !state.closed {
            state = self
                .slot
                .answered
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.answer.take()
    }

    /// As [`wait`](Waiter::wait), for at most `timeout`: `Err(self)` if no answer came yet.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Option<T>, Self> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut state = self.slot.lock();
        while !state.closed {
            let left = deadline.map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                drop(state);
                return Err(self);
            }
            state = self
                .slot
                .answered
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let answer = state.answer.take();
        drop(state);
        Ok(answer)
    }

    /// The answer, awaited without blocking (for the servers on the I/O loop); `None` as for
    /// [`wait`](Waiter::wait).
    pub(crate) async fn answer(self) -> Option<T> {
        std::future::poll_fn(|cx| {
            let mut state = self.slot.lock();
            if state.closed {
                return std::task::Poll::Ready(state.answer.take());
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// The master's end of a [`Waiter`]: answers it once; dropped unanswered, the waiter gets
/// `None`. Answering never blocks (the driver answers from the loop).
pub(crate) struct Reply<T> {
    slot: Arc<Slot<T>>,
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}

impl<T> Reply<T> {
    /// Gives the waiter its answer.
    pub(crate) fn send(self, answer: T) {
        self.slot.close(Some(answer));
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        // After `send`, this finds the slot closed and leaves it.
        self.slot.close(None);
    }
}

/// A new request's two ends: the master answers through the [`Reply`], the asker waits on the
/// [`Waiter`], blocking a thread or awaited on the loop. One answer, so no queue: its bound is
/// one value.
pub(crate) fn reply<T>() -> (Reply<T>, Waiter<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            answer: None,
            closed: false,
            waker: None,
        }),
        answered: Condvar::new(),
    });
    (
        Reply {
            slot: Arc::clone(&slot),
        },
        Waiter { slot },
    )
}

/// Where one answer waits: for a blocked thread (the condition variable) or a task (the waker).
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    answered: Condvar,
}

struct SlotState<T> {
    answer: Option<T>,
    /// Answered, or the reply dropped: nothing more comes.
    closed: bool,
    /// The task awaiting the answer, if any.
    waker: Option<std::task::Waker>,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer (if any) is in; wakes whoever waits. Only the first call counts.
    fn close(&self, answer: Option<T>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.answer = answer;
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        self.answered.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::IoLoop;

    /// A waiter is answered whether it blocks a thread, a thread of a tokio runtime included
    /// (where tokio's own blocking receive panics), or is awaited on the loop; a reply dropped
    /// unanswered is `None`.
    #[test]
    fn a_waiter_is_answered_blocking_inside_a_runtime_or_awaited() {
        let (answer, waiter) = reply::<u32>();
        let answering = std::thread::spawn(move || answer.send(7));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(async { waiter.wait() }), Some(7));
        answering.join().unwrap();

        let (answer, waiter) = reply::<u32>();
        let waiter = waiter.wait_timeout(Duration::from_millis(1)).unwrap_err();
        drop(answer);
        assert_eq!(waiter.wait_timeout(Duration::from_secs(10)).unwrap(), None);

        let (answer, waiter) = reply::<u32>();
        let io_loop = IoLoop::handle().unwrap();
        let (done, answered) = mpsc::channel();
        io_loop.spawn(async move {
            let _ = done.send(waiter.answer().await);
        });
        answer.send(9);
        assert_eq!(answered.recv_timeout(Duration::from_secs(10)), Ok(Some(9)));
    }
}
