#!/usr/bin/env bash
# The signal, interruption, watch and xdist tests, STRESS_ROUNDS times, while a CPU hog runs on
# every core: a test that holds only when the machine is idle (a handler installed after slow
# work, a fixed sleep before a signal) fails here. Prints pass counts per test and per round.
#
#   scripts/stress.sh [extra pytest args...]        (make test-stress runs it with the venv)
#
#   STRESS_ROUNDS        rounds (default 5)
#   STRESS_HOGS          CPU hogs (default: one per core, nproc)
#   STRESS_TESTS         test files (default: the four below)
#   STRESS_K             pytest -k selection (default: all but the full health run that checks what
#                        a run writes, which is neither a signal nor a timing test and takes minutes)
#   STRESS_TEST_TIMEOUT  pytest-timeout per test, seconds (default 1800): a hang fails, never blocks
#   STRESS_OUT           where JUnit per round and summary.txt go (default reports/stress-<time>)
#   PY                   python of the ttt-checks environment (default: python3)
#
# Exit 0 only when every round passed and no test was skipped (a skipped signal test proves
# nothing: without Slurm, install it with `bash .ci/system-deps` as root). The hogs are this
# script's children, stopped by pid when it ends, however it ends; each one also stops by itself
# once this script is gone (even after a SIGKILL), so none is ever left running.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
PY=${PY:-python3}
rounds=${STRESS_ROUNDS:-5}
hogs=${STRESS_HOGS:-$(nproc)}
tests=${STRESS_TESTS:-tests/test_slurm.py tests/test_bad_input_interrupted.py tests/test_watch.py tests/test_xdist.py}
selection=${STRESS_K:-not writes_nothing_outside}
test_timeout=${STRESS_TEST_TIMEOUT:-1800}
out=${STRESS_OUT:-$repo/reports/stress-$(date +%Y%m%d-%H%M%S)}

[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "stress: STRESS_ROUNDS=$rounds: expected a positive whole number" >&2; exit 4; }
[[ $hogs =~ ^[0-9]+$ ]] || { echo "stress: STRESS_HOGS=$hogs: expected a whole number (0: no load)" >&2; exit 4; }
"$PY" -c 'import pytest, pytest_timeout' 2>/dev/null \
  || { echo "stress: PY=$PY cannot import pytest and pytest_timeout: run it through 'make test-stress' or set PY" >&2; exit 4; }
mkdir -p "$out"

hog_pids=()
pytest_pid=
stop_hogs() {
  local pid
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hog_pids=()
}
# Ctrl-C or kill: stop the round's pytest (SIGTERM ends a session like Ctrl-C does) and the hogs
# now, not after the round (a trap waits for a foreground command: pytest runs in the background).
on_signal() {
  [[ -z $pytest_pid ]] || { kill -TERM "$pytest_pid" 2>/dev/null || true; wait "$pytest_pid" 2>/dev/null || true; }
  stop_hogs
  echo "stress: $1; pytest and the CPU hogs stopped" >&2
  exit "$2"
}
trap 'stop_hogs' EXIT
trap 'on_signal interrupted 130' INT
trap 'on_signal terminated 143' TERM

# A hog spins in bash (no package needed) and looks every ~100k iterations whether this script
# still exists; SIGTERM from stop_hogs ends it at once.
me=$$
for (( i = 0; i < hogs; i++ )); do
  ( trap - INT TERM EXIT
    while kill -0 "$me" 2>/dev/null; do for (( n = 0; n < 100000; n++ )); do :; done; done ) &
  hog_pids+=($!)
done
echo "stress: $hogs CPU hog(s) on $(nproc) core(s) (pids ${hog_pids[*]:-none}); $rounds round(s) of: $tests -k '$selection'"
echo "stress: reports in $out"

start=$SECONDS
failed_rounds=0
for (( r = 1; r <= rounds; r++ )); do
  t0=$SECONDS
  rc=0
  # shellcheck disable=SC2086  # $tests: a whitespace-separated list of files
  "$PY" -m pytest $tests -k "$selection" -p no:cacheprovider -q -rfE "--timeout=$test_timeout" \
    "--junitxml=$out/round-$r.xml" -o junit_family=xunit1 "$@" > "$out/round-$r.log" 2>&1 &
  pytest_pid=$!
  wait "$pytest_pid" || rc=$?
  pytest_pid=
  (( rc == 0 )) || failed_rounds=$(( failed_rounds + 1 ))
  echo "stress: round $r/$rounds: pytest exit $rc in $(( SECONDS - t0 )) s: $(tail -n 1 "$out/round-$r.log")"
done
stop_hogs
elapsed=$(( SECONDS - start ))

rc=0
"$PY" - "$out" "$rounds" <<'PY' | tee "$out/summary.txt" || rc=$?
"""Pass counts per test over the rounds' JUnit files; exit 1 unless every test passed every round."""
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
counts = defaultdict(lambda: defaultdict(int))
for r in range(1, rounds + 1):
    path = out / f"round-{r}.xml"
    if not path.is_file():
        counts[f"(round {r} wrote no JUnit)"]["error"] += 1
        continue
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".replace("tests.", "", 1)
        tags = {child.tag for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
        counts[name][outcome] += 1
bad = 0
for name in sorted(counts):
    c = counts[name]
    note = ", ".join(f"{c[k]} {k}" for k in ("failure", "error", "skipped") if c[k])
    if c["passed"] != rounds:
        bad += 1
    print(f"{c['passed']}/{rounds} {name}" + (f"  ({note})" if note else ""))
print(f"{len(counts) - bad} of {len(counts)} tests passed in all {rounds} round(s)")
sys.exit(1 if bad or not counts else 0)
PY
echo "stress: $(( rounds - failed_rounds )) of $rounds round(s) passed with $hogs CPU hog(s); $elapsed s in all"
(( failed_rounds == 0 && rc == 0 ))
