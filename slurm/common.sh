# shellcheck shell=bash
# Shared by health.sbatch and array.sbatch (sourced, never run). Everything site-specific is an
# environment variable with a default, so the same scripts run on a CPU-only test cluster and on
# a GPU cluster:
#
#   TTT_CHECKS_REPO   clone of ttt-checks holding tests_gpu/   (default: $SLURM_SUBMIT_DIR)
#   TTT_PYTHON        python of the environment with ttt-checks installed (default: python3)
#   TTT_SETUP         optional file sourced first (module load ..., conda activate ...)
#   TTT_REPORT_ROOT   shared directory for reports   (default: $TTT_CHECKS_REPO/reports/slurm)
#   TTT_DEVICE        --device for the checks         (default: auto = cuda when visible)
#   TTT_REQUIRE_GPU   1: no visible GPU is a usage error (exit 4) instead of a CPU run (default 0)
#   TTT_TEST_TIMEOUT  pytest-timeout per test, seconds (default 1800): a hung test still yields JUnit
#   TTT_FLUSH_GRACE_S after USR1, seconds pytest gets to write its reports before SIGTERM (default 90)
#   TTT_PYTEST_ARGS   extra pytest arguments, split on whitespace (positional ones are added after)

set -euo pipefail

_TTT_LAST_ERROR=
ttt_die() {  # ttt_die CODE MESSAGE: print to stderr and exit
  _TTT_LAST_ERROR=$2
  echo "ttt-checks[slurm]: $2" >&2
  exit "$1"
}

# ttt_guard_junit JUNIT SUITE: from here on, a job that ends without JUNIT (a broken TTT_PYTHON on
# the node, an unreadable manifest, ...) still leaves one, with an error test case saying why.
ttt_guard_junit() {
  _TTT_GUARD_JUNIT=$1
  _TTT_GUARD_SUITE=$2
  trap '_ttt_on_exit $?' EXIT
}

_ttt_on_exit() {
  local code=$1
  if [[ -n ${_TTT_GUARD_JUNIT:-} && ! -s $_TTT_GUARD_JUNIT ]]; then
    mkdir -p "$(dirname "$_TTT_GUARD_JUNIT")" 2>/dev/null || return 0
    ttt_write_error_junit "$_TTT_GUARD_JUNIT" "$_TTT_GUARD_SUITE" \
      "the job ended with code $code before pytest ran: ${_TTT_LAST_ERROR:-see the job output}" 2>/dev/null || true
  fi
}

ttt_init() {
  : "${TTT_CHECKS_REPO:=${SLURM_SUBMIT_DIR:-$PWD}}"
  if [[ -n ${TTT_SETUP:-} ]]; then
    [[ -r $TTT_SETUP ]] || ttt_die 4 "TTT_SETUP=$TTT_SETUP is not a readable file"
    # shellcheck disable=SC1090
    source "$TTT_SETUP"
  fi
  : "${TTT_PYTHON:=python3}"
  : "${TTT_REPORT_ROOT:=$TTT_CHECKS_REPO/reports/slurm}"
  : "${TTT_DEVICE:=auto}"
  : "${TTT_REQUIRE_GPU:=0}"
  : "${TTT_TEST_TIMEOUT:=1800}"
  : "${TTT_FLUSH_GRACE_S:=90}"
  [[ -d $TTT_CHECKS_REPO/tests_gpu ]] \
    || ttt_die 4 "TTT_CHECKS_REPO=$TTT_CHECKS_REPO has no tests_gpu/: submit from a ttt-checks clone or set TTT_CHECKS_REPO"
  "$TTT_PYTHON" -c 'import ttt_checks, pytest, pytest_timeout' 2>/dev/null \
    || ttt_die 4 "TTT_PYTHON=$TTT_PYTHON cannot import ttt_checks, pytest and pytest_timeout: point it at the ttt-checks environment"
  cd "$TTT_CHECKS_REPO"
}

ttt_ckpt_name() {  # a short name for a checkpoint path: .../checkpoint_001000/consolidated -> checkpoint_001000
  local path=${1%/}
  [[ ${path##*/} == consolidated ]] && path=${path%/consolidated}
  printf '%s\n' "${path##*/}"
}

_ttt_xml_escape() {
  local s=$1
  s=${s//&/&amp;}; s=${s//</&lt;}; s=${s//>/&gt;}; s=${s//\"/&quot;}
  printf '%s' "$s"
}

ttt_write_error_junit() {  # ttt_write_error_junit FILE SUITE MESSAGE: a JUnit with one error, for the merge
  local file=$1 suite message
  suite=$(_ttt_xml_escape "$2")
  message=$(_ttt_xml_escape "$3")
  cat > "$file.tmp" <<XML
<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="$suite" tests="1" errors="1" failures="0" skipped="0"><testcase classname="slurm.job" name="pytest_session"><error message="$message">$message</error></testcase></testsuite></testsuites>
XML
  mv -f "$file.tmp" "$file"
}

# pytest runs in the background so the batch shell can take USR1. A background job of a
# non-interactive shell starts with SIGINT ignored; the launcher restores Python's handler, so
# SIGINT makes pytest stop the session and still write JUnit and metrics.json (marked incomplete).
# A SIGINT that lands while Python is still importing pytest (USR1 early in the job) is the same
# interruption as one during a test: exit 2, pytest's "interrupted", not Python's 130.
_TTT_LAUNCHER='import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    import pytest
    code = pytest.main(sys.argv[1:])
except KeyboardInterrupt:
    code = 2
sys.exit(int(code))'
_TTT_PID=
_TTT_SIGNALLED=0
_TTT_REPORT_DIR=
_TTT_ESCALATION_PID=

_ttt_on_usr1() {
  _TTT_SIGNALLED=1
  echo "ttt-checks[slurm]: $(date -Is) USR1: the time limit is near; interrupting pytest so it writes its reports" >&2
  date -Is > "$_TTT_REPORT_DIR/TIME_LIMIT_REACHED" || true
  if [[ -n $_TTT_PID ]] && kill -0 "$_TTT_PID" 2>/dev/null; then
    kill -INT "$_TTT_PID" 2>/dev/null || true
    # If pytest is stuck in native code it may not see SIGINT: escalate after the grace period.
    ( trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
      sleep "$TTT_FLUSH_GRACE_S" & sleeper=$!
      wait "$sleeper" && kill -TERM "$_TTT_PID" 2>/dev/null ) &
    _TTT_ESCALATION_PID=$!
  fi
}

# ttt_health CKPT REPORT_DIR JUNIT SUITE [pytest args...]
# Runs the health checks of one checkpoint; returns pytest's exit code. JUNIT always exists
# afterwards: pytest's own, or one error test case saying why pytest wrote none.
ttt_health() {
  local ckpt=$1 report_dir=$2 junit=$3 suite=$4
  shift 4
  mkdir -p "$report_dir"
  _TTT_REPORT_DIR=$report_dir
  local -a args=(-m gpu "$TTT_CHECKS_REPO/tests_gpu" --ckpt "$ckpt" --report-dir "$report_dir"
    "--junitxml=$junit" -o "junit_suite_name=$suite" -o junit_family=xunit1 -o junit_logging=system-out
    -p no:cacheprovider --rootdir "$TTT_CHECKS_REPO" "--timeout=$TTT_TEST_TIMEOUT" --device "$TTT_DEVICE" -rA)
  [[ $TTT_REQUIRE_GPU == 1 ]] && args+=(--require-gpu)
  local -a extra=()
  # shellcheck disable=SC2206
  [[ -n ${TTT_PYTEST_ARGS:-} ]] && extra=($TTT_PYTEST_ARGS)
  args+=("${extra[@]}" "$@")
  echo "ttt-checks[slurm]: $(date -Is) job ${SLURM_JOB_ID:-none} on $(hostname -s): $ckpt -> $report_dir" \
       "(CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})"
  trap _ttt_on_usr1 USR1
  "$TTT_PYTHON" -c "$_TTT_LAUNCHER" "${args[@]}" &
  _TTT_PID=$!
  local rc
  while :; do
    rc=0
    wait "$_TTT_PID" || rc=$?
    # A trapped USR1 interrupts `wait` (status > 128) while pytest still runs: wait again.
    # (bash keeps the status of a finished background job, so a second wait returns it.)
    if (( rc > 128 )) && (( _TTT_SIGNALLED == 1 )); then
      _TTT_SIGNALLED=2
      continue
    fi
    break
  done
  trap - USR1
  _TTT_PID=
  if [[ -n $_TTT_ESCALATION_PID ]]; then
    kill "$_TTT_ESCALATION_PID" 2>/dev/null || true
    _TTT_ESCALATION_PID=
  fi
  if [[ ! -s $junit ]]; then
    ttt_write_error_junit "$junit" "$suite" \
      "pytest exited with code $rc before writing JUnit (checkpoint $ckpt; see the job's output for why)"
  fi
  echo "$rc" > "$report_dir/exit_code"
  echo "ttt-checks[slurm]: $(date -Is) pytest exited with $rc ($(ttt_describe_exit "$rc")); junit: $junit"
  return "$rc"
}

ttt_describe_exit() {
  case $1 in
    0) echo "healthy: every check passed" ;;
    1) echo "unhealthy: some check failed" ;;
    2) echo "interrupted (time limit or signal): reports are partial" ;;
    3) echo "internal error" ;;
    4) echo "usage error" ;;
    5) echo "no tests collected" ;;
    *) echo "killed or crashed" ;;
  esac
}
