//! Per-generation listening sockets in one `SO_REUSEPORT` group per address, steered by the
//! master with a classic BPF program (issue 19).
//!
//! Each generation of workers can get its own listening socket on each of the master's TCP
//! addresses. All of them are bound to the same address with `SO_REUSEPORT`, so the kernel keeps
//! them in one *reuseport group*, and the master always holds every one of them: no connection is
//! refused at any moment. A one-instruction cBPF program `ret #index` attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5, no privilege needed) sends every new connection to
//! the group's socket number `index`. Connections already in a socket's accept queue stay there
//! when the program changes: the old generation drains its own queue, the new one gets
//! everything new.
//!
//! # What the kernel does, and what this module relies on
//!
//! From `net/core/sock_reuseport.c` and `net/ipv4/inet_hashtables.c` (Linux 5.14 to 6.x; the
//! same order rules since 4.5):
//!
//! - A TCP socket joins a group at `listen`, not at `bind`: `inet_csk_listen_start` →
//!   `__inet_hash` → `inet_reuseport_add_sock`, which finds a listener of the same family, the
//!   same bound address and device, the same `IPV6_V6ONLY`, with `SO_REUSEPORT` and **the same
//!   owner uid** (`sk_uid`), and calls `reuseport_add_sock`; else `reuseport_alloc` starts a
//!   group. Checked by `a_socket_joins_its_group_at_listen_not_at_bind`.
//! - `reuseport_add_sock` (`__reuseport_add_sock`) puts the new socket at the end:
//!   `socks[num_socks++]`.
//! - A socket leaves when it stops listening — `shutdown(SHUT_RD)` (`inet_shutdown` calls
//!   `tcp_disconnect` for a `TCP_LISTEN` socket) or the close of its last fd — through
//!   `inet_unhash` → `reuseport_stop_listen_sock` → `__reuseport_detach_sock`, which moves the
//!   group's last socket into the freed index (`socks[i] = socks[num_socks - 1]`), a swap-remove.
//!   `shutdown` acts on the socket itself, whoever else holds an fd of it (a worker's leftover
//!   child, say): checked by `close_takes_a_set_out_even_while_another_process_holds_it`. The
//!   connections in its accept queue are reset then (`inet_csk_listen_stop`; unless
//!   `net.ipv4.tcp_migrate_req` is on, which moves them to another socket of the group), so a
//!   set is closed only once its queue is empty.
//! - `reuseport_select_sock` runs the program (`run_bpf_filter`); an index at least the group's
//!   size selects no socket, and the kernel falls back to its hash over the whole group. The
//!   program belongs to the group, not to the socket it was attached through, and stays when
//!   sockets join or leave: only the indices move.
//!
//! So [`Generations`] keeps a mirror of each group (which generation's socket is at each index),
//! updates it exactly as the kernel does, and re-attaches the program after every change. During
//! [`Generations::close`], between the `shutdown` and the re-attach (two system calls), a
//! program pointing past the new end of the group lets the hash choose: a connection can land in
//! another live set then, where [`Generations::queued`] counts it.
//!
//! # Who may join a group
//!
//! Any process running as the same user can bind the same address with `SO_REUSEPORT` while the
//! master listens and join the group: it would then get connections (the hash) or shift the
//! indices (the mirror). That is the trade-off of the feature: a process of the same uid can
//! already `ptrace` the master. An accidental second master is still refused: a master binds its
//! first socket *without* `SO_REUSEPORT` and sets it only before `listen`
//! ([`Listener::bind_steerable`]), so its `bind` fails on a port in use. A different uid cannot
//! join (the kernel compares `sk_uid`), which is also why sockets inherited from a parent running
//! as another user (systemd's, as root) cannot be steered.
//!
//! # Where steering is not possible
//!
//! Unix sockets (no reuseport groups), sockets passed in without `SO_REUSEPORT` (systemd without
//! `ReusePort=yes`, systemfd), sockets of another uid or bound to a device (`SO_BINDTODEVICE`,
//! systemd's `BindToDevice=`), kernels or sandboxes refusing the option,
//! macOS and the BSDs (FreeBSD's `SO_REUSEPORT_LB` balances but cannot be steered): every
//! generation then shares the first set, as before, and [`Generations::why_not`] says why.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockaddrLike, SockaddrStorage, bind, getsockname, listen,
    setsockopt, shutdown, sockopt,
};

use super::Listener;

/// The function that attaches `ret #index` to a socket's group (the system's, or a test's that
/// fails as a sandbox would).
type Attach = fn(BorrowedFd<'_>, u32) -> io::Result<()>;

/// Every generation's listening sockets on the master's own TCP addresses, one `SO_REUSEPORT`
/// group per address, and the steering program attached to each group (see the module's doc).
#[derive(Debug)]
pub(crate) struct Generations {
    /// The live sets, oldest generation first; never empty.
    sets: Vec<Set>,
    /// The generations announced (the first, and each given to [`open`](Self::open)) and not
    /// closed: a set stays while one of them uses it.
    users: BTreeSet<u64>,
    /// Per address (in `--listen` order), the generation whose socket is at each index of the
    /// kernel's group. Empty when not steerable.
    groups: Vec<Vec<u64>>,
    /// Where new connections go: the set of this generation, or everywhere (`None`).
    steering: Option<u64>,
    /// Why every generation shares the first set, if it does.
    why_not: Option<String>,
    attach: Attach,
}

/// One generation's sockets, one per address.
#[derive(Debug)]
struct Set {
    generation: u64,
    listeners: Arc<[Listener]>,
}

impl Generations {
    /// Takes the listeners the master bound or inherited (in `--listen` order; they serve the
    /// first generation, `first`). Steering is possible only if every listener is a TCP socket
    /// of this process's uid with `SO_REUSEPORT` set (bound by [`Listener::bind_steerable`], or
    /// inherited with the option, e.g. systemd's `ReusePort=yes`) and the kernel accepts the
    /// program (checked by attaching one); otherwise [`why_not`](Self::why_not) says why in a
    /// few words, and every generation shares these listeners. `enabled == false` (switched
    /// off by the user): shared too.
    ///
    /// When steerable, every new connection goes to the first set until
    /// [`steer`](Self::steer) says otherwise: a set [`open`](Self::open)ed later gets nothing
    /// before it is steered to.
    pub(crate) fn new(listeners: Vec<Listener>, first: u64, enabled: bool) -> Self {
        Self::with_attach(listeners, first, enabled, crate::sys::attach_steering)
    }

    fn with_attach(listeners: Vec<Listener>, first: u64, enabled: bool, attach: Attach) -> Self {
        let why_not = if enabled {
            unsteerable(&listeners, attach)
        } else {
            Some("switched off".to_owned())
        };
        let groups = if why_not.is_none() {
            vec![vec![first]; listeners.len()]
        } else {
            Vec::new()
        };
        Generations {
            sets: vec![Set {
                generation: first,
                listeners: listeners.into(),
            }],
            users: BTreeSet::from([first]),
            groups,
            steering: Some(first),
            why_not,
            attach,
        }
    }

    /// Why every generation shares the first set (`None`: steering works).
    pub(crate) fn why_not(&self) -> Option<&str> {
        self.why_not.as_deref()
    }

    /// Whether every listener is on a loopback address (`127.0.0.0/8`, `::1`): all clients are
    /// on this host.
    pub(crate) fn loopback_only(&self) -> bool {
        self.sets[0].listeners.iter().all(|listener| {
            listener
                .address()
                .parse::<SocketAddr>()
                .is_ok_and(|address| address.ip().is_loopback())
        })
    }

    /// Whether generations can have their own sockets and be steered to.
    pub(crate) fn steerable(&self) -> bool {
        self.why_not.is_none()
    }

    /// Opens `generation`'s own sockets: one per listener, `SO_REUSEPORT` and `SO_REUSEADDR`,
    /// bound to the exact address of the newest set (port 0 resolved), with its `IPV6_V6ONLY`
    /// and its backlog, close-on-exec, with the same names. They join the groups at the end; new
    /// connections reach them once [`steer`](Self::steer) sends them there.
    ///
    /// `generation` must be newer than every set's. When not steerable, `generation` just shares
    /// the newest set. On failure (`EMFILE`…) no socket is left in a group (all are bound before
    /// any listens; those that listened are closed, each the last of its group, so no index
    /// moves), `generation` shares the newest older set, and the error is returned for one line
    /// of report.
    pub(crate) fn open(&mut self, generation: u64) -> io::Result<()> {
        self.open_with(generation, |fd, backlog| Ok(listen(fd, backlog)?))
    }

    fn open_with(
        &mut self,
        generation: u64,
        mut listen: impl FnMut(&OwnedFd, Backlog) -> io::Result<()>,
    ) -> io::Result<()> {
        let newest = self.newest().generation;
        if newest == generation {
            return Ok(());
        }
        if newest > generation {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "generation {generation} is older than generation {newest}, which has its sockets"
                ),
            ));
        }
        self.users.insert(generation);
        if !self.steerable() {
            return Ok(());
        }
        let template = Arc::clone(&self.newest().listeners);
        let bound = template
            .iter()
            .map(|listener| bound_like(listener.as_fd()).map(|fd| (listener, fd)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut made = Vec::with_capacity(bound.len());
        for (listener, (fd, backlog)) in bound {
            // On failure, the sockets that listened are closed on return: the master holds
            // their only fd (close-on-exec, and it forks on one thread), so each leaves its
            // group, of which it is the last: no other index moves.
            listen(&fd, backlog)?;
            made.push(Listener {
                name: listener.name.clone(),
                shown: getsockname::<SockaddrStorage>(fd.as_raw_fd())
                    .map_or_else(|_| listener.shown.clone(), |address| address.to_string()),
                fd,
                unix_file: None,
                inherited: false,
            });
        }
        for group in &mut self.groups {
            group.push(generation);
        }
        self.sets.push(Set {
            generation,
            listeners: made.into(),
        });
        self.apply()
    }

    /// The sockets a worker of `generation` gets (at fds 3, 4, … in order): its own set, or the
    /// newest set of an older generation, or else the oldest live set.
    pub(crate) fn for_generation(&self, generation: u64) -> Arc<[Listener]> {
        Arc::clone(&self.set_of(generation).listeners)
    }

    /// Whether `generation` has its own sockets (so steering can separate it from the others).
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn owns(&self, generation: u64) -> bool {
        self.steerable() && self.sets.iter().any(|set| set.generation == generation)
    }

    /// Sends every new connection on every address to the sockets `generation` gets from
    /// [`for_generation`](Self::for_generation) (a program `ret #index` attached to each group),
    /// or, with `None`, lets the kernel spread them over every socket of the group (program
    /// detached). Kept, and applied again after every change of the groups. Nothing to do when
    /// not steerable.
    pub(crate) fn steer(&mut self, to: Option<u64>) -> io::Result<()> {
        self.steering = to;
        self.apply()
    }

    /// The connections waiting in the accept queues of the set `generation` uses (its own, or
    /// the older one it shares), all addresses summed (`TCP_INFO`'s `tcpi_unacked` of each
    /// listening socket); `None` if unknown or when not steerable.
    pub(crate) fn queued(&self, generation: u64) -> Option<u64> {
        if !self.steerable() {
            return None;
        }
        self.set_of(generation)
            .listeners
            .iter()
            .map(|listener| {
                crate::sys::accept_queue(listener.as_fd())
                    .ok()
                    .map(|queue| u64::from(queue.queued))
            })
            .sum()
    }

    /// Retires `generation`: the sets no live generation uses any more are taken out of their
    /// groups and the master's copies closed. Each socket is shut down (`SHUT_RD`: it leaves its
    /// group at once and stops accepting, whoever else still holds it), the group's mirror is
    /// updated as the kernel did (its last socket moved into the freed index), and the program
    /// attached again with the new index.
    ///
    /// Connections still queued on a closed socket are reset: call it once
    /// [`queued`](Self::queued) is 0. Never closes a set the master did not bind itself
    /// (inherited sockets are never shut down: systemd keeps using them; they stay in their
    /// groups, steered past), nor the last live set.
    pub(crate) fn close(&mut self, generation: u64) -> io::Result<()> {
        self.users.remove(&generation);
        if !self.steerable() {
            return Ok(());
        }
        let used: BTreeSet<u64> = self
            .users
            .iter()
            .map(|&user| self.set_of(user).generation)
            .collect();
        let mut result = Ok(());
        while let Some(position) = self.sets.iter().position(|set| {
            !used.contains(&set.generation) && set.listeners.iter().all(|l| !l.inherited)
        }) {
            if self.sets.len() == 1 {
                break;
            }
            let set = self.sets.remove(position);
            for (address, listener) in set.listeners.iter().enumerate() {
                if let Err(error) = shutdown(listener.as_fd().as_raw_fd(), Shutdown::Read) {
                    result = result.and(Err(error.into()));
                }
                let group = &mut self.groups[address];
                if let Some(index) = group.iter().position(|&g| g == set.generation) {
                    group.swap_remove(index);
                }
                result = result.and(self.apply_to(address));
            }
        }
        result
    }

    /// The master stops: every socket of every set takes no new connection from now on
    /// (`sys::refuse_connections`), while the workers still accept what the queues hold. Nothing
    /// to do when not steerable (a unix socket cannot be filtered so; the shared sockets stay as
    /// they were).
    pub(crate) fn refuse_new(&self) -> io::Result<()> {
        if !self.steerable() {
            return Ok(());
        }
        self.sets
            .iter()
            .flat_map(|set| set.listeners.iter())
            .try_for_each(|listener| crate::sys::refuse_connections(listener.as_fd()))
    }

    /// Every socket of every live set (for the readiness probe's inodes).
    pub(crate) fn all_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.sets
            .iter()
            .flat_map(|set| set.listeners.iter().map(AsFd::as_fd))
            .collect()
    }

    /// The newest set.
    fn newest(&self) -> &Set {
        self.sets
            .last()
            .unwrap_or_else(|| unreachable!("never empty"))
    }

    /// The set `generation` uses: its own, the newest older one, or the oldest.
    fn set_of(&self, generation: u64) -> &Set {
        self.sets
            .iter()
            .rev()
            .find(|set| set.generation <= generation)
            .unwrap_or(&self.sets[0])
    }

    /// Attaches the program of the current steering to every group.
    fn apply(&self) -> io::Result<()> {
        (0..self.groups.len()).try_for_each(|address| self.apply_to(address))
    }

    /// Attaches the program of the current steering to the group of the `address`-th listener.
    fn apply_to(&self, address: usize) -> io::Result<()> {
        if !self.steerable() {
            return Ok(());
        }
        let member = self.newest().listeners[address].as_fd();
        match self.steering {
            Some(generation) => {
                let target = self.set_of(generation).generation;
                let index = self.groups[address]
                    .iter()
                    .position(|&g| g == target)
                    .and_then(|index| u32::try_from(index).ok())
                    .ok_or_else(|| io::Error::other("the steered set is not in its group"))?;
                (self.attach)(member, index)
            }
            None => crate::sys::detach_steering(member),
        }
    }
}

/// Why `listeners` cannot be steered (`None`: they can; the program `ret #0` is then attached).
fn unsteerable(listeners: &[Listener], attach: Attach) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("steering needs Linux's SO_ATTACH_REUSEPORT_CBPF".to_owned());
    }
    if listeners.is_empty() {
        return Some("no listener".to_owned());
    }
    let euid = nix::unistd::geteuid().as_raw();
    for listener in listeners {
        let fd = listener.as_fd();
        let which = if listener.inherited {
            format!("inherited fd {}", fd.as_raw_fd())
        } else {
            listener.address().to_owned()
        };
        let family = getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .ok()
            .and_then(|address| address.family());
        if !matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6)) {
            let what = if family == Some(AddressFamily::Unix) {
                "a unix socket"
            } else {
                "not a TCP socket"
            };
            return Some(format!("{which} is {what}"));
        }
        if !setsockopt_flag(fd) {
            return Some(format!("{which} has no SO_REUSEPORT"));
        }
        // The kernel groups only sockets bound to the same device; a later generation's socket
        // made without the device would form a group of its own, preferred by nothing.
        #[cfg(target_os = "linux")]
        if let Ok(device) = nix::sys::socket::getsockopt(&fd, sockopt::BindToDevice)
            && !device.is_empty()
        {
            return Some(format!(
                "{which} is bound to device {}",
                device.to_string_lossy()
            ));
        }
        match nix::sys::stat::fstat(fd) {
            Ok(stat) if stat.st_uid == euid => {}
            Ok(stat) => {
                return Some(format!(
                    "{which} belongs to uid {}, not {euid}: the kernel groups one user's sockets",
                    stat.st_uid
                ));
            }
            Err(error) => return Some(format!("{which}: fstat: {error}")),
        }
    }
    for listener in listeners {
        if let Err(error) = attach(listener.as_fd(), 0) {
            return Some(format!(
                "the kernel refused SO_ATTACH_REUSEPORT_CBPF: {error}"
            ));
        }
    }
    None
}

/// Whether `fd` has `SO_REUSEPORT` set.
fn setsockopt_flag(fd: BorrowedFd<'_>) -> bool {
    nix::sys::socket::getsockopt(&fd, sockopt::ReusePort).unwrap_or(false)
}

/// A new socket bound like the listening socket `like` (its address, `IPV6_V6ONLY`), with
/// `SO_REUSEADDR` and `SO_REUSEPORT`, not yet listening; and the backlog to listen with.
fn bound_like(like: BorrowedFd<'_>) -> io::Result<(OwnedFd, Backlog)> {
    let address: SockaddrStorage = getsockname(like.as_raw_fd())?;
    let family = address
        .family()
        .ok_or_else(|| io::Error::other("the listener's address has no family"))?;
    let fd = crate::sys::stream_socket(family, false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    if family == AddressFamily::Inet6 {
        // The kernel groups only sockets with the same `IPV6_V6ONLY`.
        let v6only = nix::sys::socket::getsockopt(&like, sockopt::Ipv6V6Only)?;
        setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)?;
    }
    bind(fd.as_raw_fd(), &address)?;
    let backlog = crate::sys::accept_queue(like)
        .ok()
        .and_then(|queue| i32::try_from(queue.backlog).ok())
        .and_then(|backlog| Backlog::new(backlog).ok())
        .unwrap_or(Backlog::MAXCONN);
    Ok((fd, backlog))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::listener::ListenAddr;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Waits for `condition`, failing after a generous deadline.
    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn steerable_listener(address: &str) -> Listener {
        Listener::bind_steerable(&address.parse::<ListenAddr>().unwrap(), true).unwrap()
    }

    /// A master of one listener on a fresh port, generation 1.
    fn generations(count: usize) -> Generations {
        let listeners = (0..count)
            .map(|_| steerable_listener("127.0.0.1:0"))
            .collect();
        let generations = Generations::new(listeners, 1, true);
        assert_eq!(generations.why_not(), None);
        generations
    }

    fn address_of(listener: &Listener) -> SocketAddr {
        listener.address().parse().unwrap()
    }

    fn queue_of(listener: &Listener) -> u32 {
        crate::sys::accept_queue(listener.as_fd()).unwrap().queued
    }

    /// Opens `count` connections to the `address`-th listener and waits until the kernel has
    /// queued each of them on one of `sockets`.
    fn connect(generations: &Generations, address: usize, count: usize, keep: &mut Vec<TcpStream>) {
        let sockets: Vec<Arc<[Listener]>> = generations
            .sets
            .iter()
            .map(|set| Arc::clone(&set.listeners))
            .collect();
        let target = address_of(&sockets[0][address]);
        let before: u32 = sockets.iter().map(|s| queue_of(&s[address])).sum();
        for _ in 0..count {
            keep.push(TcpStream::connect(target).unwrap());
        }
        let expected = before + u32::try_from(count).unwrap();
        wait_for("the connections to be queued", || {
            sockets.iter().map(|s| queue_of(&s[address])).sum::<u32>() == expected
        });
    }

    /// Accepts every connection waiting on `listener` without blocking: how many there were.
    fn drain(listener: &Listener) -> usize {
        let socket = TcpListener::from(listener.fd.try_clone().unwrap());
        socket.set_nonblocking(true).unwrap();
        let mut count = 0;
        loop {
            match socket.accept() {
                Ok(_) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break count,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// How many connections each set got on address 0, oldest set first (drained).
    fn landed(generations: &Generations) -> Vec<usize> {
        generations
            .sets
            .iter()
            .map(|set| drain(&set.listeners[0]))
            .collect()
    }

    #[test]
    fn steering_sends_every_connection_to_one_set_or_spreads_them() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        assert!(generations.owns(1) && generations.owns(2));
        let mut clients = Vec::new();
        // Until steered, a new set gets nothing.
        connect(&generations, 0, 10, &mut clients);
        assert_eq!(landed(&generations), [10, 0]);
        generations.steer(Some(2)).unwrap();
        connect(&generations, 0, 40, &mut clients);
        assert_eq!(landed(&generations), [0, 40]);
        generations.steer(Some(1)).unwrap();
        connect(&generations, 0, 40, &mut clients);
        assert_eq!(landed(&generations), [40, 0]);
        generations.steer(None).unwrap();
        connect(&generations, 0, 40, &mut clients);
        let spread = landed(&generations);
        // Each connection picks by a hash of its ports: all 40 on one socket has odds 2^-39.
        assert!(spread[0] > 0 && spread[1] > 0, "{spread:?}");
        assert_eq!(spread.iter().sum::<usize>(), 40);
    }

    #[test]
    fn only_listeners_all_on_loopback_addresses_are_loopback_only() {
        let of = |addresses: &[&str]| {
            let listeners = addresses.iter().map(|a| steerable_listener(a)).collect();
            Generations::new(listeners, 1, true).loopback_only()
        };
        assert!(of(&["127.0.0.1:0"]));
        assert!(of(&["127.0.0.1:0", "[::1]:0"]));
        // Any address of the host's reaches the network.
        assert!(!of(&["0.0.0.0:0"]));
        assert!(!of(&["127.0.0.1:0", "[::]:0"]));
    }

    #[test]
    fn steering_to_a_generation_follows_its_sockets_when_they_open() {
        let mut generations = generations(1);
        // Generation 2 has no sockets yet: it would share generation 1's.
        generations.steer(Some(2)).unwrap();
        generations.open(2).unwrap();
        let mut clients = Vec::new();
        connect(&generations, 0, 20, &mut clients);
        assert_eq!(landed(&generations), [0, 20]);
    }

    #[test]
    fn every_address_is_steered() {
        let mut generations = generations(2);
        generations.open(2).unwrap();
        generations.steer(Some(2)).unwrap();
        let mut clients = Vec::new();
        for address in 0..2 {
            connect(&generations, address, 20, &mut clients);
            let counts: Vec<usize> = generations
                .sets
                .iter()
                .map(|set| drain(&set.listeners[address]))
                .collect();
            assert_eq!(counts, [0, 20], "address {address}");
        }
        // The new sockets are the old ones' twins: same names and addresses.
        let (old, new) = (generations.for_generation(1), generations.for_generation(2));
        for (old, new) in old.iter().zip(new.iter()) {
            assert_eq!(old.name(), new.name());
            assert_eq!(old.address(), new.address());
        }
        assert_eq!(generations.all_fds().len(), 4);
    }

    #[test]
    fn queued_connections_stay_with_their_set_when_steering_changes() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        generations.steer(Some(1)).unwrap();
        let mut clients = Vec::new();
        connect(&generations, 0, 5, &mut clients);
        assert_eq!(generations.queued(1), Some(5));
        generations.steer(Some(2)).unwrap();
        connect(&generations, 0, 5, &mut clients);
        assert_eq!(generations.queued(1), Some(5));
        assert_eq!(generations.queued(2), Some(5));
        assert_eq!(landed(&generations), [5, 5]);
        assert_eq!(generations.queued(1), Some(0));
    }

    #[test]
    fn closing_a_set_moves_the_last_into_its_index_and_steering_follows() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        generations.open(3).unwrap();
        generations.steer(Some(3)).unwrap();
        assert_eq!(generations.groups, [vec![1, 2, 3]]);
        let mut clients = Vec::new();
        connect(&generations, 0, 20, &mut clients);
        assert_eq!(landed(&generations), [0, 0, 20]);

        generations.close(1).unwrap();
        assert!(!generations.owns(1));
        assert_eq!(generations.groups, [vec![3, 2]]);
        connect(&generations, 0, 40, &mut clients);
        assert_eq!(landed(&generations), [0, 40]);

        generations.close(2).unwrap();
        assert_eq!(generations.groups, [vec![3]]);
        connect(&generations, 0, 20, &mut clients);
        assert_eq!(landed(&generations), [20]);
        // The last set stays, whatever is asked.
        generations.close(3).unwrap();
        assert_eq!(generations.sets.len(), 1);
    }

    #[test]
    fn closing_a_set_before_the_last_moves_nothing() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        generations.open(3).unwrap();
        generations.steer(Some(2)).unwrap();
        // An aborted generation 3: its set goes, the steering to 2 stays right.
        generations.close(3).unwrap();
        assert_eq!(generations.groups, [vec![1, 2]]);
        let mut clients = Vec::new();
        connect(&generations, 0, 20, &mut clients);
        assert_eq!(landed(&generations), [0, 20]);
    }

    #[test]
    fn close_takes_a_set_out_even_while_another_process_holds_it() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        // A leftover child of a worker still has generation 1's socket.
        let leftover = TcpListener::from(generations.for_generation(1)[0].fd.try_clone().unwrap());
        generations.steer(None).unwrap();
        generations.close(1).unwrap();
        let mut clients = Vec::new();
        connect(&generations, 0, 40, &mut clients);
        assert_eq!(landed(&generations), [40]);
        leftover.set_nonblocking(true).unwrap();
        let error = leftover.accept().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::EINVAL), "{error}");
    }

    #[test]
    fn a_set_shared_by_a_live_generation_stays() {
        let mut generations = generations(1);
        generations.open(2).unwrap();
        // Generation 3's sockets could not be made: it shares generation 2's.
        generations
            .open_with(3, |_, _| {
                Err(io::Error::from_raw_os_error(nix::libc::EMFILE))
            })
            .unwrap_err();
        assert!(!generations.owns(3));
        generations.close(2).unwrap();
        assert!(generations.owns(2), "generation 3 still uses it");
        assert!(generations.owns(1), "generation 1 still uses it");
        assert_eq!(generations.groups, [vec![1, 2]]);
        generations.close(1).unwrap();
        assert_eq!(generations.groups, [vec![2]]);
        generations.close(3).unwrap();
        assert_eq!(generations.groups, [vec![2]], "the last set stays");
    }

    #[test]
    fn a_failed_open_leaves_every_group_as_it_was() {
        let mut generations = generations(2);
        generations.steer(Some(1)).unwrap();
        // The second address's socket fails to listen: the first one's, already in its group,
        // must leave it.
        let mut calls = 0;
        let error = generations
            .open_with(2, |fd, backlog| {
                calls += 1;
                if calls == 2 {
                    return Err(io::Error::from_raw_os_error(nix::libc::EMFILE));
                }
                Ok(listen(fd, backlog)?)
            })
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::EMFILE));
        assert!(!generations.owns(2));
        assert!(Arc::ptr_eq(
            &generations.for_generation(2),
            &generations.for_generation(1)
        ));
        assert_eq!(generations.groups, [vec![1], vec![1]]);
        // Spread over the group: had the half-made socket stayed, it would take some.
        generations.steer(None).unwrap();
        let mut clients = Vec::new();
        for address in 0..2 {
            connect(&generations, address, 40, &mut clients);
            assert_eq!(drain(&generations.sets[0].listeners[address]), 40);
        }
        // A later generation gets the indices right.
        generations.open(3).unwrap();
        generations.steer(Some(3)).unwrap();
        for address in 0..2 {
            connect(&generations, address, 20, &mut clients);
            assert_eq!(drain(&generations.sets[1].listeners[address]), 20);
        }
    }

    #[test]
    fn a_socket_joins_its_group_at_listen_not_at_bind() {
        let first = steerable_listener("127.0.0.1:0");
        let address: SockaddrStorage = getsockname(first.fd.as_raw_fd()).unwrap();
        let (early, _) = bound_like(first.as_fd()).unwrap();
        let (late, _) = bound_like(first.as_fd()).unwrap();
        // Bound early, listening late: the kernel's order is [first, late, early].
        listen(&late, Backlog::MAXCONN).unwrap();
        listen(&early, Backlog::MAXCONN).unwrap();
        crate::sys::attach_steering(first.as_fd(), 1).unwrap();
        let target: SocketAddr = address.to_string().parse().unwrap();
        let clients: Vec<TcpStream> = (0..10)
            .map(|_| TcpStream::connect(target).unwrap())
            .collect();
        let late = TcpListener::from(late);
        wait_for("10 connections on the socket that listened second", || {
            crate::sys::accept_queue(late.as_fd()).unwrap().queued == 10
        });
        assert_eq!(crate::sys::accept_queue(early.as_fd()).unwrap().queued, 0);
        drop(clients);
    }

    #[test]
    fn a_second_steerable_bind_of_a_port_in_use_is_refused() {
        let first = steerable_listener("127.0.0.1:0");
        let again = Listener::bind_steerable(&first.address().parse().unwrap(), true).unwrap_err();
        assert!(
            again.to_string().contains("address already in use"),
            "{again}"
        );
        // Even where the holder has SO_REUSEPORT from before bind (another server's way).
        let other = nix::sys::socket::socket(
            AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        setsockopt(&other, sockopt::ReusePort, &true).unwrap();
        bind(
            other.as_raw_fd(),
            &nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        listen(&other, Backlog::MAXCONN).unwrap();
        let taken: SockaddrStorage = getsockname(other.as_raw_fd()).unwrap();
        let again =
            Listener::bind_steerable(&taken.to_string().parse().unwrap(), true).unwrap_err();
        assert!(
            again.to_string().contains("address already in use"),
            "{again}"
        );
    }

    #[test]
    fn why_not_names_what_prevents_steering() {
        let dir = tempfile::tempdir().unwrap();
        let unix = Listener::bind(
            &format!("unix:{}", dir.path().join("a.sock").display())
                .parse()
                .unwrap(),
        )
        .unwrap();
        let path = unix.address().to_owned();
        let shared = Generations::new(vec![steerable_listener("127.0.0.1:0"), unix], 1, true);
        assert_eq!(
            shared.why_not(),
            Some(format!("{path} is a unix socket").as_str())
        );
        assert!(!shared.steerable());

        let plain = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let shown = plain.address().to_owned();
        let shared = Generations::new(vec![plain], 1, true);
        assert_eq!(
            shared.why_not(),
            Some(format!("{shown} has no SO_REUSEPORT").as_str())
        );

        let mut inherited = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        inherited.inherited = true;
        let fd = inherited.fd.as_raw_fd();
        let shared = Generations::new(vec![inherited], 1, true);
        assert_eq!(
            shared.why_not(),
            Some(format!("inherited fd {fd} has no SO_REUSEPORT").as_str())
        );

        // Binding to a device needs no privilege since Linux 5.7 (when not bound before).
        let bound = steerable_listener("127.0.0.1:0");
        if setsockopt(
            &bound.fd,
            sockopt::BindToDevice,
            &std::ffi::OsString::from("lo"),
        )
        .is_ok()
        {
            let shown = bound.address().to_owned();
            let shared = Generations::new(vec![bound], 1, true);
            assert_eq!(
                shared.why_not(),
                Some(format!("{shown} is bound to device lo").as_str())
            );
        }

        let off = Generations::new(vec![steerable_listener("127.0.0.1:0")], 1, false);
        assert_eq!(off.why_not(), Some("switched off"));

        let refused =
            Generations::with_attach(vec![steerable_listener("127.0.0.1:0")], 1, true, |_, _| {
                Err(io::Error::from_raw_os_error(nix::libc::EPERM))
            });
        let why = refused.why_not().unwrap();
        assert!(
            why.starts_with("the kernel refused SO_ATTACH_REUSEPORT_CBPF: ")
                && why.contains("(os error 1)"),
            "{why}"
        );
    }

    /// Set in the copy of this test binary run under `fixtures/seccomp_reuseport.py`.
    const UNDER_SECCOMP: &str = "MCLUSTER_TEST_REUSEPORT_REFUSED";

    /// A sandbox that refuses `SO_ATTACH_REUSEPORT_CBPF`: this very test runs again in a child
    /// of this test binary under a seccomp filter making the option fail with `EPERM` (while
    /// `SO_REUSEPORT` and every other option work), and there finds the listeners shared.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn a_kernel_refusing_the_program_leaves_the_listeners_shared() {
        const NAME: &str =
            "listener::steering::tests::a_kernel_refusing_the_program_leaves_the_listeners_shared";
        if std::env::var_os(UNDER_SECCOMP).is_some() {
            let mut shared = Generations::new(vec![steerable_listener("127.0.0.1:0")], 1, true);
            assert_eq!(
                shared.why_not(),
                Some(
                    "the kernel refused SO_ATTACH_REUSEPORT_CBPF: Operation not permitted (os \
                     error 1)"
                )
            );
            shared.open(2).unwrap();
            assert!(Arc::ptr_eq(
                &shared.for_generation(2),
                &shared.for_generation(1)
            ));
            return;
        }
        crate::sys::rerun_test_under_seccomp("seccomp_reuseport.py", NAME, UNDER_SECCOMP);
    }

    #[test]
    fn unsteerable_generations_share_the_first_set() {
        let mut shared = Generations::new(vec![steerable_listener("127.0.0.1:0")], 1, false);
        shared.open(2).unwrap();
        shared.steer(Some(2)).unwrap();
        assert!(!shared.owns(1) && !shared.owns(2));
        assert!(Arc::ptr_eq(
            &shared.for_generation(2),
            &shared.for_generation(1)
        ));
        assert_eq!(shared.queued(2), None);
        shared.close(1).unwrap();
        assert_eq!(shared.all_fds().len(), 1);
        let mut clients = Vec::new();
        connect(&shared, 0, 5, &mut clients);
        assert_eq!(landed(&shared), [5]);
    }
}
