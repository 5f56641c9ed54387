#!/bin/bash
# Runs a worker command so that it never outlives the BEAM port that started it.
#
# Usage: worker_wrapper.bash GRACE_SECONDS COMMAND [ARG...]
#
# Snakepit.Telemetry.Worker opens a port on this script. The command runs in its own
# session and process group with stdin from /dev/null; its output goes to the port. The script prints
# one line `SNAKEPIT_CHILD_PID:<pid>` first. A watcher reads the port's stdin until it
# closes: when the Worker closes the port, or when the BEAM dies (even by kill -9), the
# watcher sends SIGTERM to the command's whole process group, waits up to GRACE_SECONDS,
# then sends SIGKILL. The script exits with the command's exit status.
grace=$1
shift

# setsid makes the command a process-group leader (pgid = its pid), so the group signal
# reaches whatever it starts too. Without setsid, only the command itself is signalled.
if command -v setsid >/dev/null 2>&1; then
  setsid "$@" </dev/null &
  child=$!
  target="-$child"
else
  "$@" </dev/null &
  child=$!
  target="$child"
fi
echo "SNAKEPIT_CHILD_PID:$child"

(
  cat >/dev/null
  kill -TERM -- "$target" 2>/dev/null
  ticks=$(awk "BEGIN { print int($grace * 10) }")
  i=0
  while kill -0 -- "$target" 2>/dev/null && [ "$i" -lt "$ticks" ]; do
    sleep 0.1
    i=$((i + 1))
  done
  kill -KILL -- "$target" 2>/dev/null
) <&0 >/dev/null 2>&1 &
watcher=$!

wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
