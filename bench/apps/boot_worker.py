"""The roll benchmark's worker (`python3 bench/run.py --roll-only`): boots for 1 s, then serves the
inherited socket (fd 3, systemd socket passing) with a `poll` loop; never sends READY=1.

One line in, one line out (`pid=N LINE`), like the echo fixture. On SIGTERM it stops accepting
(it leaves the shared socket to the other workers) and exits after the connection it is serving,
so no request it accepted is cut. The boot time comes from the first argument (seconds, 1 by
default).
"""

import os
import select
import signal
import socket
import sys
import time

time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)  # the app's boot

listener = socket.socket(fileno=3)
listener.setblocking(False)
# SIGTERM wakes the poll through a pipe: a handler that raised could cut a connection between
# `accept` returning and its answer.
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.set_wakeup_fd(wake_w)
poller = select.poll()
poller.register(listener, select.POLLIN)
poller.register(wake_r, select.POLLIN)
pid = os.getpid()


def age() -> float:
    """Seconds since this process was created (exec of the interpreter included), to 10 ms."""
    stat = open("/proc/self/stat").read()
    start_ticks = int(stat[stat.rfind(")") + 2 :].split()[19])
    uptime = float(open("/proc/uptime").read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


# Its age, and the moment, on the clock the benchmark reads too (CLOCK_MONOTONIC), when it starts
# polling: the benchmark compares that with the master's `ready` line.
print(f"boot_worker: serving pid={pid} after {age():.3f}s at {time.monotonic():.6f}", file=sys.stderr, flush=True)

while True:
    events = poller.poll()
    if any(fd == wake_r for fd, _ in events):
        break
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        continue
    with conn:
        conn.setblocking(True)
        conn.settimeout(5)
        try:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"pid=%d %s" % (pid, data))
        except OSError:
            pass
listener.close()
