# shellcheck shell=bash
# Part of scripts/dev-env (sourced): the environment's processes, started in the background with
# their PID in the state folder, waited for, and stopped by that PID only.

# A free TCP port on ADDRESS (default 127.0.0.1).
free_port() { python3 -c 'import socket, sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"; }

pid_of() { cat "$STATE_DIR/$1.pid" 2>/dev/null || true; }
is_running() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# start NAME COMMAND...: runs it in the background with its log and PID in the state folder.
start() {
  local name=$1; shift
  "$@" >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
}

# wait_for NAME SECONDS CHECK...: polls CHECK until it succeeds; shows the log's tail on failure.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! is_running "$name"; then
      tail -n 20 "$STATE_DIR/$name.log" >&2 || true
      die "$name exited during start-up; its log is $STATE_DIR/$name.log"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$STATE_DIR/$name.log" >&2 || true
      die "$name was not ready after ${seconds}s; its log is $STATE_DIR/$name.log"
    fi
    sleep 0.5
  done
}

# stop NAME: SIGTERM, up to 5 s, then SIGKILL; true when it was running.
stop() {
  local name=$1 pid
  pid=$(pid_of "$name")
  rm -f "$STATE_DIR/$name.pid"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
