#!/usr/bin/env bash
# Alternating throughput rounds of the code before and after the redesign, in new processes.
#   BEFORE=DIR AFTER=DIR bash benchmarks/results/redesign_throughput_2026-12-01/provenance/run.sh
# BEFORE and AFTER are checkouts (e.g. `git worktree add`) of the two commits; results land here.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)"  # the result folder, above provenance/
run() {  # $1: before | after, $2: round
  local dir; dir=$([ "$1" = before ] && echo "$BEFORE" || echo "$AFTER")
  (cd "$dir" && python -m benchmarks.throughput --framework jax --steps 300 --out "$out/$1_round$2.json")
}
run before 1; run after 1
run before 2; run after 2
run before 3; run after 3
run after 4; run before 4
run before 5; run after 5
run after 6; run before 6
run before 7; run after 7
run before 8; run after 8
run after 9; run before 9
run before 10; run after 10
run after 11; run before 11
