#!/usr/bin/env bash
# The `make run` demo: a local cluster (ferry dev: a server and three agents on
# 127.0.0.1, mutual TLS, an admin token), then a workload that makes the
# control loop preempt (suspend low priority for high priority), migrate
# and drain, shown live (`ferry events -f`) with `ferry ps` between steps.
# It ends by itself after a bounded time, with or without a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-bin/ferry}
DIR=$(mktemp -d /tmp/ferry-demo.XXXXXX)
DEV_PID=""
EV_PID=""

cleanup() {
	[ -n "$EV_PID" ] && kill "$EV_PID" 2>/dev/null || true
	if [ -n "$DEV_PID" ] && kill -0 "$DEV_PID" 2>/dev/null; then
		kill -INT "$DEV_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$DEV_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$DEV_PID" 2>/dev/null || true
	fi
	echo "demo: cluster stopped; its files are in $DIR"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting a local cluster (ferry dev: 1 server, 3 agents with 2 CPUs each) in $DIR"
"$FERRY" dev --dir "$DIR" --listen 127.0.0.1:0 --agents 3 --cpus 2 --memory 2G --for 180s >"$DIR/dev.out" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 120); do
	[ -f "$DIR/env.sh" ] && break
	kill -0 "$DEV_PID" 2>/dev/null || break
	sleep 0.5
done
if [ ! -f "$DIR/env.sh" ]; then
	echo "demo: the cluster did not come up within 60s; this demo shows nothing more. ferry dev said:"
	cat "$DIR/dev.out"
	exit 1
fi
cat "$DIR/dev.out"
# shellcheck disable=SC1091
source "$DIR/env.sh"

"$FERRY" nodes
say "the control loop's events, live:"
"$FERRY" events -f --for 170s > >(sed -u 's/^/   [event] /') 2>/dev/null &
EV_PID=$!

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local t=$1 what=$2
	shift 2
	for _ in $(seq 1 $((t * 2))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.5
	done
	echo "demo: $what did not happen within ${t}s (showing the state as it is)"
	return 0
}
job_is() { "$FERRY" job status "$1" | head -1 | grep -q ": $2 "; }

say "1. submit web (priority 5, 2 tasks spread over nodes) and batch-low (priority 1, 4 tasks): the cluster is full"
"$FERRY" job run examples/jobs/web.yaml
"$FERRY" job run examples/jobs/batch-low.yaml
wait_for 30 "web and batch-low running" sh -c "$(declare -f job_is); FERRY=$FERRY; job_is web running && job_is batch-low running"
sleep 2
"$FERRY" ps
"$FERRY" nodes

say "2. a bad spec is refused with its line and field"
"$FERRY" job run examples/jobs/bad.yaml || true

say "3. urgent work arrives (priority 10): the loop suspends batch-low (to disk, with its state) to make room"
"$FERRY" job run examples/jobs/urgent.yaml
wait_for 30 "urgent running" sh -c "$(declare -f job_is); FERRY=$FERRY; job_is urgent running && job_is batch-low suspended"
sleep 1
"$FERRY" ps

say "4. an operator moves one urgent task to a node with room (checkpoint, copy, restore)"
FREE=$("$FERRY" nodes | awk 'NR>1 { split($4, c, "/"); if (c[1] + 1 <= c[2]) { print $1; exit } }')
TASK=urgent.solve.0
FROM=$("$FERRY" ps | awk -v t=$TASK '$1==t {print $4}')
if [ -n "$FREE" ] && [ "$FREE" != "$FROM" ]; then
	"$FERRY" migrate "$TASK" --to "$FREE"
	wait_for 30 "the migration" sh -c "'$FERRY' ps | awk -v t=$TASK -v n=$FREE '\$1==t && \$4==n' | grep -q ."
else
	TASK=urgent.solve.1
	FROM=$("$FERRY" ps | awk -v t=$TASK '$1==t {print $4}')
	if [ -n "$FREE" ] && [ "$FREE" != "$FROM" ]; then
		"$FERRY" migrate "$TASK" --to "$FREE"
		wait_for 30 "the migration" sh -c "'$FERRY' ps | awk -v t=$TASK -v n=$FREE '\$1==t && \$4==n' | grep -q ."
	else
		echo "demo: no node with room apart from where the urgent tasks are; skipping the manual move"
	fi
fi
"$FERRY" ps
echo "--- the last lines $TASK printed (its step counter continues across the move):"
"$FERRY" logs "$TASK" --tail 3 || true

say "5. urgent is done: the loop resumes batch-low from its checkpoint"
"$FERRY" job stop urgent
wait_for 30 "batch-low resumed" sh -c "$(declare -f job_is); FERRY=$FERRY; job_is batch-low running"
sleep 1
"$FERRY" ps
echo "--- batch-low.counter.0 continues counting where it stopped:"
"$FERRY" logs batch-low.counter.0 --tail 3 || true

DRAIN=$("$FERRY" ps | awk '$1=="web.web.0" {print $4}')
say "6. drain $DRAIN for maintenance: web moves off it; batch-low no longer fits and sleeps"
"$FERRY" node drain "$DRAIN"
wait_for 40 "the drain" sh -c "'$FERRY' nodes | awk -v n=$DRAIN '\$1==n && \$6==0' | grep -q ."
sleep 1
"$FERRY" ps
"$FERRY" nodes

say "7. undrain $DRAIN: batch-low runs again"
"$FERRY" node undrain "$DRAIN"
wait_for 30 "batch-low running again" sh -c "$(declare -f job_is); FERRY=$FERRY; job_is batch-low running"
sleep 1
"$FERRY" ps
# Into a file first: with pipefail, head closing the pipe early would make
# ferry die of SIGPIPE and fail the demo.
"$FERRY" plans >"$DIR/plans.txt"
head -40 "$DIR/plans.txt"

say "done: the plans above are the journal the loop kept (every action's state before and after)"
