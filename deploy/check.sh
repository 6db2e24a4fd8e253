#!/usr/bin/env bash
# deploy/Dockerfile and deploy/kubernetes.yaml, run for real with Debian's podman (run by .ci/run).
#
# No image registry is reachable here, so both base images are built from Debian's packages
# (debootstrap from deb.debian.org) and passed to the Dockerfile as build arguments; the
# build stage gets the host's Rust toolchain (the same 1.95 as rust:1.95-slim-bookworm) and
# cargo's registry cache as read-only/cache volumes, and runs the Dockerfile's own `cargo build`.
# Then, against the image:
#   1. mcluster runs as PID 1 and serves on a port published on 127.0.0.1;
#   2. `podman exec … mcluster status` and `mcluster restart` work (generation 2 serves);
#   3. a worker SIGKILLed inside the container is replaced;
#   4. `podman stop` under load ends within the kill timeout (exit 0, no SIGKILL), and no
#      request the container accepted failed;
#   5. `podman kube play deploy/kubernetes.yaml` (the image name substituted) runs the pod with
#      the manifest's command, and it serves; its probe commands pass.
# Everything lives in a private podman store under a temporary directory, removed on exit,
# failure included.
#
# What podman cannot show (a real cluster's job, not run here): replicas (kube play starts one
# pod), the Service, the readiness probe gating traffic (podman runs no readinessProbe; the
# check runs its command instead), the preStop hook, the rolling update of a Deployment, and
# Prometheus scraping.
#
# Podman on these machines: crun refuses the hybrid cgroup layout (hence runc), and runc cannot
# apply podman's default nofile/nproc limits here (EPERM), so the limits are given explicitly,
# as the host's own hard limits (capped).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/mcluster-deploy-check.XXXXXX)
# The host's hard limits, capped at podman's own defaults (nproc=32768; runc was refused the
# host's full nproc limit, 96367, here).
cap() { if [[ $1 == unlimited ]] || (($1 > $2)); then echo "$2"; else echo "$1"; fi; }
nofile=$(cap "$(ulimit -Hn)" 1048576)
nproc=$(cap "$(ulimit -Hu)" 32768)
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
# For what takes no --runtime or --ulimit (kube play): the same settings as podman's defaults.
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf
pm() { podman --root "$work/storage" --runroot "$work/run" --runtime runc "$@"; }

cleanup() {
  local status=$?
  set +e
  if [[ -n ${kube:-} ]]; then pm kube down "$kube" >/dev/null 2>&1; fi
  pm pod rm -af -t 0 >/dev/null 2>&1
  pm rm -af -t 0 >/dev/null 2>&1
  pm rmi -af >/dev/null 2>&1
  pm system reset -f >/dev/null 2>&1
  # An interrupted debootstrap leaves its chroot's /proc (and /sys) mounted.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r umount -l
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "deploy/check: $*"; }
fail() { echo "deploy/check: FAILED: $*" >&2; exit 1; }

# Waits up to 60 s for a command to succeed.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "$what (60 s)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- base images ------------------------------------------------------------------------------
say "debootstrap bookworm (minbase) from deb.debian.org"
debootstrap --variant=minbase bookworm "$work/base" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
tar -C "$work/base" -c . | pm import -q - localhost/mcluster-check-base:bookworm >/dev/null
# The build image: the same root with a C linker, and Rust where rust:1.95-slim-bookworm has it.
cp -a "$work/base" "$work/rust"
cp /etc/resolv.conf "$work/rust/etc/resolv.conf"
chroot "$work/rust" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null 2>&1 && apt-get clean'
tar -C "$work/rust" -c . | pm import -q \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - localhost/mcluster-check-rust:1.95 >/dev/null
rm -rf "$work/base" "$work/rust"

toolchain=$(rustc --print sysroot)
registry=${CARGO_HOME:-$HOME/.cargo}/registry
image=localhost/hello-mcluster:check
say "podman build -f deploy/Dockerfile (toolchain $(rustc --version | cut -d' ' -f2))"
pm build -q -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore "${limits[@]}" \
  --build-arg RUST_IMAGE=localhost/mcluster-check-rust:1.95 \
  --build-arg BASE_IMAGE=localhost/mcluster-check-base:bookworm \
  -v "$toolchain:/usr/local/rust:ro" -v "$registry:/usr/local/cargo/registry" \
  -t "$image" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "podman build"; }
built=$(date +%s)
say "image built in $((built - started)) s"

# --- the container ----------------------------------------------------------------------------
port=$(free_port)
# NET_ADMIN: at a stop mcluster makes its listeners refuse new connections with a socket filter
# (SO_ATTACH_FILTER), which mainline Linux lets anyone attach but this machine's kernel only a
# process with CAP_NET_ADMIN; without it mcluster says so in one line, and a stop under load
# may reset the connections the listen backlog holds (deploy/README.md).
pm run -d --name mcluster-check "${limits[@]}" --cap-add NET_ADMIN -p "127.0.0.1:$port:3000" "$image" >/dev/null
ctr=mcluster-check
get() { curl -fsS --max-time 5 "http://127.0.0.1:$port/"; }
wait_for "the container serving on 127.0.0.1:$port" get
pid1=$(pm exec "$ctr" cat /proc/1/cmdline | tr '\0' ' ')
[[ $pid1 == /usr/local/bin/mcluster\ start* ]] || fail "PID 1 is not mcluster: $pid1"
say "PID 1: $pid1; serves: $(get)"

status() { pm exec "$ctr" mcluster status --json; }
field() { python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
pm exec "$ctr" mcluster status
[[ $(status | field 's["serving_generation"]') == 1 ]] || fail "generation 1 not serving"
pm exec "$ctr" mcluster restart || fail "mcluster restart"
[[ $(status | field 's["serving_generation"]') == 2 ]] || fail "generation 2 not serving after restart"
get | grep -q 'generation 2' || fail "generation 2 does not answer"
say "restart: generation 2 serves"

victim=$(status | field 's["workers"][0]["pid"]')
# The shell's kill: a minbase root has no procps.
pm exec "$ctr" sh -c "kill -KILL $victim"
replaced() {
  status | field 'all(w["state"] == "ready" for w in s["workers"]) and s["workers"][0]["pid"] != '"$victim"' and s["workers"][0]["restarts"] == 1' | grep -qx True
}
wait_for "worker 0 (pid $victim) replaced after SIGKILL" replaced
say "SIGKILLed worker $victim replaced by $(status | field 's["workers"][0]["pid"]')"

# Load from the host until the container stops. A connection that never opens (refused, or
# its SYN dropped until the client gives up: at the stop, mcluster's listeners refuse new
# connections) ends a client: nothing was sent. Every request that was sent must be answered
# in full: a reset or a cut answer fails the check (mcluster lets its workers drain the
# listen backlog before their stop signal; see deploy/README.md).
cat >"$work/load.py" <<'EOF'
import socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
ok, failed, lock = [0], [], threading.Lock()
def client():
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except (ConnectionRefusedError, TimeoutError):
            return
        data = b""
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            while chunk := s.recv(65536):
                data += chunk
            if not data.startswith(b"HTTP/1.1 200") or b"Hello from worker" not in data:
                raise OSError(f"bad answer {data[:80]!r}")
            with lock:
                ok[0] += 1
                if ok[0] == 100:
                    open(sys.argv[3], "w").close()
        except OSError as e:
            with lock:
                failed.append(repr(e))
        finally:
            s.close()
threads = [threading.Thread(target=client) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(f"{ok[0]} answered, {len(failed)} failed {failed[:5]}")
sys.exit(1 if failed or ok[0] == 0 else 0)
EOF
python3 "$work/load.py" "$port" 30 "$work/load.started" >"$work/load.out" 2>&1 &
load=$!
wait_for "load under way (100 answers)" test -e "$work/load.started"
t0=$(date +%s%N)
pm stop -t 10 "$ctr" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
wait "$load" || { cat "$work/load.out"; pm logs --tail 30 "$ctr" || true; fail "requests failed during podman stop"; }
code=$(pm inspect -f '{{.State.ExitCode}}' "$ctr")
[[ $code == 0 ]] || { pm logs --tail 20 "$ctr"; fail "podman stop: exit code $code (SIGKILL is 137)"; }
((stop_ms < 8000)) || fail "podman stop took ${stop_ms} ms, beyond the 8 s kill timeout"
say "podman stop under load: ${stop_ms} ms, exit 0; load: $(cat "$work/load.out")"
pm rm "$ctr" >/dev/null

# --- kube play --------------------------------------------------------------------------------
# The manifest as it is, but for what podman must be told differently: the local image name,
# one replica (podman starts one pod per replica, each publishing the same ports), and the
# ports published on 127.0.0.1 at free ports (podman 4.3 publishes every containerPort on all
# interfaces at the same number, where a cluster publishes none).
kube=$work/kubernetes.yaml
kport=$(free_port)
mport=$(free_port)
python3 - deploy/kubernetes.yaml "$image" "$kport" "$mport" >"$kube" <<'PY' || fail "substituting deploy/kubernetes.yaml"
import re, sys
manifest, image, http, metrics = sys.argv[1:]
text = open(manifest).read()
def sub(old, new):
    global text
    if old not in text:
        sys.exit(f"deploy/kubernetes.yaml: no {old!r} to substitute")
    text = text.replace(old, new, 1)
sub("image: hello-mcluster:latest", f"image: {image}")
sub("replicas: 3", "replicas: 1")
for port, host in (("3000", http), ("9100", metrics)):
    m = re.search(rf"^( *)containerPort: {port}$", text, re.M)
    if not m:
        sys.exit(f"deploy/kubernetes.yaml: no containerPort {port}")
    pad = m.group(1)
    sub(m.group(0), f"{m.group(0)}\n{pad}hostIP: 127.0.0.1\n{pad}hostPort: {host}")
print(text, end="")
PY
# Podman turns the livenessProbe into a healthcheck, scheduled by systemd timers, which this
# machine lacks (it says so on stderr): `podman healthcheck run` runs it once below. Podman
# runs no readinessProbe: its command is run with `podman exec`.
pm kube play "$kube" >"$work/kube.out" 2>&1 || { cat "$work/kube.out"; fail "podman kube play"; }
kctr=$(pm ps --filter status=running --format '{{.Names}}' | grep -v -- '-infra$' | head -1)
[[ -n $kctr ]] || { pm ps -a; fail "no running container from the manifest"; }
kget() { curl -fsS --max-time 5 "http://127.0.0.1:$kport/"; }
wait_for "the pod serving on 127.0.0.1:$kport" kget
kpid1=$(pm exec "$kctr" cat /proc/1/cmdline | tr '\0' ' ')
[[ $kpid1 == "/usr/local/bin/mcluster start "*"--kill-timeout 20s"* ]] \
  || fail "the pod's PID 1 is not the manifest's command: $kpid1"
wait_for "the readiness probe's command (mcluster status --ready)" pm exec "$kctr" mcluster status --ready
pm healthcheck run "$kctr" || fail "the liveness probe (podman healthcheck run)"
curl -fsS --max-time 5 "http://127.0.0.1:$mport/metrics" | grep -q '^mcluster_' || fail "no metrics on the metrics port"
say "kube play: $kctr, PID 1 $kpid1; serves ($(kget)); the probes pass; metrics served"
pm kube down "$kube" >/dev/null 2>>"$work/kube.out"
kube=

say "all checks passed in $(($(date +%s) - started)) s"
