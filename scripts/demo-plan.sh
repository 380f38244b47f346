#!/usr/bin/env bash
# Planner demo: `ferry plan --explain` on the shipped examples — a cycle two
# VMs can only break with a pivot, and the drain of a node (its VMs leave, a
# node boots, the drained node shuts down). Each also writes its BtrPlace
# ReconfigurationPlan under $OUT (default: a fresh temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-bin/ferry}
if [ ! -x "$FERRY" ]; then
  go build -o bin/ferry ./cmd/ferry
  FERRY=bin/ferry
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for ex in examples/plan/cycle.json examples/plan/drain.json; do
  name=$(basename "$ex" .json)
  echo "=== ferry plan --explain $ex"
  "$FERRY" plan --timeout 10s --explain -o "$OUT/$name.plan.json" "$ex"
  echo "(plan written to $OUT/$name.plan.json)"
  echo
done
