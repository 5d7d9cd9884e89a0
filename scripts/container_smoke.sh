#!/usr/bin/env bash
# Build the container image and smoke-test it, on a machine with no image
# registry: CI runs this (see .ci/run), and so can a developer.
#
#   scripts/container_smoke.sh            # everything below, a few minutes warm
#
# 1. Docker: Debian's docker.io (and debootstrap) from apt if missing; dockerd
#    started in the background if none answers (stopped at exit only then).
# 2. A base image without a registry: debootstrap --variant=minbase bookworm,
#    imported once and kept by name (30-80 s cold, skipped after that).
# 3. A stand-in for python:3.11-slim on it: Debian's python3 (3.11) + venv, the
#    host's extra CA certificates (pip inside the build reaches PyPI through this
#    machine's TLS-intercepting egress), `python` and `python3` on PATH.
# 4. The real Dockerfile, unchanged but for --build-arg BASE=<stand-in>.
# 5. Smoke test, --network=host only (no bridge here): a server and two workers
#    on one volume, health SERVING, the HEALTHCHECK healthy, a job that succeeds,
#    a job cancelled mid-run, non-root, precompiled bytecode, a root-owned bind
#    mount; then the image size and the server's start-up time. compose.yaml
#    is validated with `docker-compose config` where Debian's docker-compose is
#    installed (it is not installed for this).
#
# Every wait is bounded; any failure exits non-zero with the containers' logs.
# Environment: LONGRUN_IMAGE (tag to build, default longrun:ci), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${LONGRUN_IMAGE:-longrun:ci}
BASE_IMAGE=longrun-ci/debian-minbase:bookworm
STANDIN_IMAGE=longrun-ci/python-standin:3.11-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/longrun-smoke-dockerd.log}
PREFIX=longrun-smoke-$$

WORK=$(mktemp -d "${TMPDIR:-/tmp}/longrun-smoke.XXXXXX")
DOCKERD_PID=""
CONTAINERS=()
VOLUME=""
STARTED=$(date +%s)

log() { printf '[container-smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}
now_ms() { date +%s%3N; }

dump_logs() {
    local c
    for c in "${CONTAINERS[@]}"; do
        docker container inspect "$c" >/dev/null 2>&1 || continue
        echo "===== logs of $c ($(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c")) =====" >&2
        docker logs --tail 200 "$c" 2>&1 | sed 's/^/    /' >&2 || true
    done
}

cleanup() {
    local rc=$?
    set +e
    [[ $rc -ne 0 ]] && dump_logs
    if ((${#CONTAINERS[@]})); then
        docker rm -f -v "${CONTAINERS[@]}" >/dev/null 2>&1
    fi
    [[ -n $VOLUME ]] && docker volume rm -f "$VOLUME" >/dev/null 2>&1
    rm -rf "$WORK"
    if [[ -n $DOCKERD_PID ]]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
    fi
    if [[ $rc -eq 0 ]]; then
        log "PASS ($(($(date +%s) - STARTED)) s)"
    else
        log "FAILED (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---- 1. tools and the Docker daemon ----------------------------------------

ensure_tools() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || die "need root to install: ${missing[*]}"
        log "installing ${missing[*]} (apt-get)"
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

ensure_dockerd() {
    if timeout 20 docker info >/dev/null 2>&1; then
        log "using the running Docker daemon"
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "no Docker daemon answers and only root can start one"
    log "starting dockerd (log: $DOCKERD_LOG)"
    dockerd --storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none \
        >"$DOCKERD_LOG" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        if timeout 5 docker info >/dev/null 2>&1; then
            log "dockerd is up"
            return
        fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited; see $DOCKERD_LOG"
        sleep 0.5
    done
    die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
}

# ---- 2. and 3. base and stand-in images --------------------------------------

ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE: cached"
        return
    fi
    log "base image $BASE_IMAGE: debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
    local t0 rootfs=$WORK/rootfs
    t0=$(now_ms)
    timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | timeout 300 docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "base image built in $((($(now_ms) - t0) / 1000)) s"
}

build_standin() {
    local ctx=$WORK/standin
    mkdir -p "$ctx/extra-ca"
    # The host's local CAs (this machine's egress re-signs TLS with one of them).
    if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
        cp -rL /usr/local/share/ca-certificates/. "$ctx/extra-ca/"
    fi
    touch "$ctx/extra-ca/.keep"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV LANG=C.UTF-8
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-venv ca-certificates \\
    && rm -rf /var/lib/apt/lists/* \\
    && ln -s /usr/bin/python3 /usr/local/bin/python
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
EOF
    log "stand-in $STANDIN_IMAGE (python3 + venv on $BASE_IMAGE)"
    timeout 900 docker build --force-rm --network=host -t "$STANDIN_IMAGE" "$ctx" >"$WORK/standin.log" 2>&1 || {
        tail -n 40 "$WORK/standin.log" >&2
        die "building the stand-in failed"
    }
    docker run --rm --network=host "$STANDIN_IMAGE" \
        sh -c 'python --version && python3 -c "import ensurepip, venv"' >&2
}

# ---- 4. the image ------------------------------------------------------------

build_image() {
    local t0 previous
    previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    log "building $IMAGE from ./Dockerfile with BASE=$STANDIN_IMAGE"
    t0=$(now_ms)
    if ! timeout 1500 docker build --force-rm --network=host --build-arg "BASE=$STANDIN_IMAGE" \
        -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
        tail -n 60 "$WORK/build.log" >&2
        die "docker build failed"
    fi
    BUILD_S=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
    # The classic builder says what .dockerignore let through.
    CONTEXT=$(sed -n 's/.*Sending build context to Docker daemon *//p' "$WORK/build.log" | tail -n 1)
    log "image built in ${BUILD_S} s (build context ${CONTEXT:-?})"
    # The image this tag named before, if any: untagged now (the classic
    # builder's cache of the build stage stays, so keep `docker image prune` off).
    if [[ -n $previous && $previous != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    if command -v docker-compose >/dev/null; then
        docker-compose -f compose.yaml config -q || die "compose.yaml: docker-compose config failed"
        log "compose.yaml: docker-compose config OK"
    fi
}

# ---- 5. smoke test -----------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs in a container: wait until the port accepts (a cheap TCP connect every
# 10 ms, so the poller takes little CPU from the starting server), then until
# the health service says SERVING; print the epoch seconds it did.
# shellcheck disable=SC2016  # Python, not shell
WAIT_SERVING='
import socket, sys, time
import grpc
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
target, limit = sys.argv[1], float(sys.argv[2])
deadline = time.time() + limit
host, _, port = target.rpartition(":")
def give_up():
    if time.time() > deadline:
        sys.exit(f"{target} not SERVING after {limit:g} s")
while True:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        give_up()
        time.sleep(0.01)
with grpc.insecure_channel(target) as channel:
    stub = g.HealthStub(channel)
    while True:
        try:
            response = stub.Check(h.HealthCheckRequest(), timeout=1, wait_for_ready=True)
            if response.status == h.HealthCheckResponse.SERVING:
                print(f"{time.time():.3f}")
                break
        except grpc.RpcError:
            pass
        give_up()
        time.sleep(0.01)
'

# The longrun CLI from the image, a fresh container per call.
cli() {
    timeout 120 docker run --rm --network=host --no-healthcheck "$IMAGE" \
        longrun --target "$TARGET" "$@"
}

json_field() { # json_field EXPR: evaluate a Python expression on `op` (stdin JSON)
    python3 -c "import json, sys; op = json.load(sys.stdin); print($1)"
}

start_container() { # start_container NAME DOCKER-RUN-ARGS... IMAGE [COMMAND...]
    local name=$1
    shift
    CONTAINERS+=("$name")
    docker run -d --name "$name" --network=host "$@" >/dev/null
}

smoke_test() {
    local port server t_run serving_at started_at startup_ms out name state code uid c i
    port=$(free_port)
    TARGET=127.0.0.1:$port
    VOLUME=$PREFIX-data
    docker volume create "$VOLUME" >/dev/null
    server=$PREFIX-server

    log "server on $TARGET, volume $VOLUME"
    t_run=$(now_ms)
    start_container "$server" -v "$VOLUME:/data" -e "LONGRUN_ADDRESS=$TARGET" "$IMAGE"
    serving_at=$(timeout 90 docker exec "$server" python -c "$WAIT_SERVING" "$TARGET" 60) ||
        die "server not SERVING"
    started_at=$(docker inspect -f '{{.State.StartedAt}}' "$server")
    startup_ms=$(python3 - "$started_at" "$serving_at" <<'EOF'
import sys
from datetime import datetime
start = sys.argv[1].rstrip("Z")
whole, _, frac = start.partition(".")
t0 = datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))
print(round((float(sys.argv[2]) - t0) * 1000))
EOF
)
    STARTUP_MS=$startup_ms
    log "SERVING ${startup_ms} ms after the container started ($(($(now_ms) - t_run)) ms after docker run)"

    for i in 1 2; do
        start_container "$PREFIX-worker-$i" --no-healthcheck -v "$VOLUME:/data" "$IMAGE" longrun-worker
    done

    log "a job: longrun submit sleep --param worktime=1 --wait"
    out=$(cli submit sleep --param worktime=1 --wait --timeout 60) || die "sleep job did not succeed: $out"
    grep -q '"slept_seconds"' <<<"$out" || die "unexpected result: $out"
    log "succeeded: $(tr -d '\n ' <<<"$out")"

    log "a long job, cancelled while it runs"
    name=$(cli submit sleep --param worktime=300) || die "submit failed: $name"
    state=""
    for _ in $(seq 30); do
        state=$(cli get "$name" | json_field 'op.get("metadata", {}).get("state", "")') || true
        [[ $state == RUNNING ]] && break
        sleep 0.5
    done
    [[ $state == RUNNING ]] || die "$name never RUNNING (last state: ${state:-?})"
    cli cancel "$name" >/dev/null || die "cancel failed"
    out=$(cli wait "$name" --timeout 30 --json) && die "a cancelled job reported success: $out"
    state=$(json_field 'op.get("metadata", {}).get("state", "")' <<<"$out")
    code=$(json_field 'op.get("error", {}).get("code", "")' <<<"$out")
    [[ $state == CANCELLED && $code == 1 ]] ||
        die "$name ended in state '$state' with error code '$code', not CANCELLED: $out"
    log "$name ended CANCELLED (error code 1)"

    for c in "$server" "$PREFIX-worker-1" "$PREFIX-worker-2"; do
        uid=$(docker exec "$c" id -u)
        [[ $uid == 10001 ]] || die "$c runs as uid $uid, not 10001"
        [[ $(docker inspect -f '{{.State.Running}}' "$c") == true ]] || die "$c is not running"
    done
    log "server and workers run as uid 10001"

    log "HEALTHCHECK: waiting for docker to call the server healthy"
    state=""
    for _ in $(seq 60); do
        state=$(docker inspect -f '{{.State.Health.Status}}' "$server")
        [[ $state == healthy ]] && break
        sleep 0.5
    done
    [[ $state == healthy ]] || die "HEALTHCHECK status is '$state' after 30 s"
    log "HEALTHCHECK healthy"

    check_bytecode
    check_root_owned_bind_mount

    local size base_size
    size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
    base_size=$(docker image inspect -f '{{.Size}}' "$STANDIN_IMAGE")
    IMAGE_MB=$(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }')
    APP_MB=$(awk -v b="$((size - base_size))" 'BEGIN { printf "%.1f", b / 1e6 }')
}

# Every module in the venv already has valid bytecode: compileall as root with
# writing allowed must write nothing (docker diff shows any .pyc it wrote).
check_bytecode() {
    local c=$PREFIX-bytecode written
    CONTAINERS+=("$c")
    timeout 300 docker run --name "$c" --network=host --no-healthcheck --user 0 \
        -e PYTHONDONTWRITEBYTECODE= "$IMAGE" \
        sh -ec 'python -m compileall -q /opt/longrun/lib >/dev/null 2>&1; longrun-server --help >/dev/null; longrun-worker --help >/dev/null; longrun --help >/dev/null' ||
        die "the commands' --help failed"
    written=$(docker diff "$c" | grep -c '\.pyc$' || true)
    [[ $written -eq 0 ]] || {
        docker diff "$c" | grep '\.pyc$' | head -n 20 >&2
        die "$written .pyc files were written at run time: bytecode is not precompiled"
    }
    log "bytecode precompiled: nothing compiled at run time"
}

# A bind mount of a root-owned folder: the non-root server cannot create the
# database and must say so and exit, not crash with a traceback.
check_root_owned_bind_mount() {
    local c=$PREFIX-rootmount dir=$WORK/root-owned running logs problem=""
    mkdir -p "$dir"
    chmod 755 "$dir"
    CONTAINERS+=("$c")
    docker run -d --name "$c" --network=host --no-healthcheck -v "$dir:/data" \
        -e "LONGRUN_ADDRESS=127.0.0.1:$(free_port)" "$IMAGE" >/dev/null
    for _ in $(seq 40); do
        running=$(docker inspect -f '{{.State.Running}}' "$c")
        [[ $running == false ]] && break
        sleep 0.5
    done
    logs=$(docker logs "$c" 2>&1 | tail -n 40)
    if [[ $running != false ]]; then
        problem="the server kept running for 20 s on a database folder it cannot write"
    elif [[ $(docker inspect -f '{{.State.ExitCode}}' "$c") == 0 ]]; then
        problem="the server exited 0"
    elif grep -q Traceback <<<"$logs"; then
        problem="the server crashed with a traceback"
    fi
    [[ -z $problem ]] || die "root-owned bind mount: $problem: $logs"
    log "root-owned bind mount: clear error, exit $(docker inspect -f '{{.State.ExitCode}}' "$c"): $(tail -n 1 <<<"$logs")"
}

ensure_tools
ensure_dockerd
ensure_base_image
build_standin
build_image
smoke_test
log "image $IMAGE: ${IMAGE_MB} MB (${APP_MB} MB above the stand-in base); built in ${BUILD_S} s"
log "server start-up: ${STARTUP_MS} ms from container start to SERVING"
