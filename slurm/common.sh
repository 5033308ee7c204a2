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
#   TTT_FLUSH_GRACE_S after USR1, seconds pytest gets to write its reports before SIGKILL (default 90)
#   TTT_PYTEST_ARGS   extra pytest arguments, split on whitespace (positional ones are added after)
#
# Signals. Each job script's first statement is a trap that only records USR1 (Slurm's time-limit
# warning, `--signal=B:USR1@N`) or TERM (the time limit itself, scancel); ttt_guard_junit, the
# first thing after `source common.sh`, installs the real handler and acts on a recorded signal.
# So there is no moment without a handler, and what a signal does depends on the stage it lands in:
#   set-up (before pytest runs)  exit 2 with an error JUnit: "time limit reached before the checks started"
#   pytest running              SIGINT to pytest: it stops, writes its JUnit and reports, exits 2
#   pytest writing its reports  noted; the run is complete and keeps its verdict
#   after pytest                noted; the job exits with pytest's code
# Test hook: TTT_TEST_SIGNAL_AT=STAGE[:SIGNAL] makes the job send itself SIGNAL (default USR1) at
# STAGE: start (before common.sh is sourced), setup (in ttt_init), python, import, tests, reports
# (slurm/launch_pytest.py), after (pytest has exited). tests/test_slurm.py proves every stage.

set -euo pipefail

_TTT_LAST_ERROR=
ttt_die() {  # ttt_die CODE MESSAGE: print to stderr and exit
  _TTT_LAST_ERROR=$2
  echo "ttt-checks[slurm]: $2" >&2
  exit "$1"
}

# ttt_guard_junit JUNIT SUITE: from here on, a job that ends without JUNIT (a broken TTT_PYTHON on
# the node, an unreadable manifest, ...) still leaves one, with an error test case saying why; and
# USR1/TERM get their real handler. A signal the job script's first trap recorded is acted on now.
ttt_guard_junit() {
  _TTT_GUARD_JUNIT=$1
  _TTT_GUARD_SUITE=$2
  _TTT_REPORT_DIR=${1%/*}
  trap '_ttt_on_exit $?' EXIT
  trap '_ttt_on_signal USR1' USR1
  trap '_ttt_on_signal TERM' TERM
  if [[ -n ${_TTT_EARLY_SIGNAL:-} ]]; then
    _ttt_on_signal "$_TTT_EARLY_SIGNAL"
  fi
}

# ttt_test_signal_at STAGE: the test hook (see the top of this file); a no-op unless asked for.
ttt_test_signal_at() {
  local wanted=${TTT_TEST_SIGNAL_AT:-}
  [[ -n $wanted && ${wanted%%:*} == "$1" ]] || return 0
  local sig=USR1
  [[ $wanted == *:* ]] && sig=${wanted#*:}
  echo "ttt-checks[slurm]: test hook: $sig to this job shell at stage $1" >&2
  kill -s "$sig" $$
}

_ttt_on_exit() {
  local code=$1
  _TTT_STAGE=exiting  # a signal now must not start a second ending
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
  ttt_test_signal_at setup
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

# State of the signal handling. _TTT_STAGE: setup until pytest is launched, pytest while it runs,
# done after; _TTT_TRAPPED tells the wait loop that a handler ran.
_TTT_STAGE=setup
_TTT_PID=
_TTT_STOP_SIGNAL=
_TTT_INTERRUPT_SENT=0
_TTT_TRAPPED=0
_TTT_REPORT_DIR=
_TTT_ESCALATION_PID=

_ttt_stop_file() {  # the file a stop leaves in the report folder; launch_pytest.py looks for both
  if [[ $1 == USR1 ]]; then echo "$_TTT_REPORT_DIR/TIME_LIMIT_REACHED"; else echo "$_TTT_REPORT_DIR/TERMINATED"; fi
}

_ttt_on_signal() {
  local sig=$1 why
  _TTT_TRAPPED=1
  if [[ $sig == USR1 ]]; then why="USR1: the time limit is near"; else why="TERM: the job is being ended (time limit or scancel)"; fi
  case $_TTT_STAGE in
    setup)
      local what
      if [[ $sig == USR1 ]]; then
        what="time limit reached before the checks started (Slurm's USR1 came during the job's set-up): give the job a longer --time"
      else
        what="the job was terminated (SIGTERM: time limit or scancel) before the checks started"
      fi
      echo "ttt-checks[slurm]: $(date -Is) $why; $what" >&2
      _TTT_LAST_ERROR=$what
      _TTT_STAGE=exiting
      if [[ -n $_TTT_REPORT_DIR ]]; then
        mkdir -p "$_TTT_REPORT_DIR" 2>/dev/null || true
        date -Is > "$(_ttt_stop_file "$sig")" 2>/dev/null || true
        [[ -n ${_TTT_GUARD_JUNIT:-} ]] && { ttt_write_error_junit "$_TTT_GUARD_JUNIT" "$_TTT_GUARD_SUITE" "$what" 2>/dev/null || true; }
      fi
      exit 2 ;;
    pytest)
      if [[ -n $_TTT_STOP_SIGNAL ]]; then
        echo "ttt-checks[slurm]: $(date -Is) $sig again: pytest is already stopping" >&2
        return 0
      fi
      _TTT_STOP_SIGNAL=$sig
      echo "ttt-checks[slurm]: $(date -Is) $why; interrupting pytest so it writes its reports" >&2
      # Written before SIGINT goes out: launch_pytest.py reads it after installing its handlers, so
      # a SIGINT that lands while Python starts (and is ignored) still stops the run.
      date -Is > "$(_ttt_stop_file "$sig")" || true
      [[ -n $_TTT_PID ]] && _ttt_interrupt_pytest
      return 0 ;;
    done)
      echo "ttt-checks[slurm]: $(date -Is) $why, but pytest has ended: its verdict stands" >&2
      date -Is > "$(_ttt_stop_file "$sig")" 2>/dev/null || true
      return 0 ;;
    *) return 0 ;;  # already exiting
  esac
}

# Once per job: SIGINT to pytest, then SIGKILL after TTT_FLUSH_GRACE_S if it is stuck (in native
# code a Python handler never runs, and launch_pytest.py ignores a second SIGINT or SIGTERM so
# that its reports are not cut short: SIGKILL is what still ends it, leaving the shell time to
# write the error JUnit before Slurm's own kill).
_ttt_interrupt_pytest() {
  (( _TTT_INTERRUPT_SENT == 0 )) || return 0
  _TTT_INTERRUPT_SENT=1
  kill -INT "$_TTT_PID" 2>/dev/null || true
  echo "$(date -Is) SIGINT sent to pytest (pid $_TTT_PID)" >> "$(_ttt_stop_file "$_TTT_STOP_SIGNAL")" || true
  ( trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$TTT_FLUSH_GRACE_S" & sleeper=$!
    wait "$sleeper" && kill -KILL "$_TTT_PID" 2>/dev/null ) &
  _TTT_ESCALATION_PID=$!
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
  # pytest runs in the background so that the shell takes a signal at once (a trap waits for a
  # foreground command to end). A USR1 between `&` and `$!` finds no pid: it is sent just below.
  _TTT_STAGE=pytest
  _TTT_SHELL_PID=$$ _TTT_STOP_FILES="$(_ttt_stop_file USR1):$(_ttt_stop_file TERM)" \
    "$TTT_PYTHON" "$TTT_CHECKS_REPO/slurm/launch_pytest.py" "${args[@]}" &
  _TTT_PID=$!
  [[ -n $_TTT_STOP_SIGNAL ]] && _ttt_interrupt_pytest
  local rc=0 status waited=0
  while :; do
    _TTT_TRAPPED=0
    status=0
    wait "$_TTT_PID" || status=$?
    # A handler that ran interrupts `wait` (status 128+n) while pytest may still run: wait again.
    # bash 5 keeps a finished background job's status for a second wait; an older bash answers
    # 127 (no such child) once it has reported it, and then the status it reported stands.
    (( status == 127 && waited )) || rc=$status
    waited=1
    (( _TTT_TRAPPED )) || break
  done
  _TTT_STAGE=done
  if [[ -n $_TTT_ESCALATION_PID ]]; then
    kill "$_TTT_ESCALATION_PID" 2>/dev/null || true
    wait "$_TTT_ESCALATION_PID" 2>/dev/null || true
    _TTT_ESCALATION_PID=
  fi
  ttt_test_signal_at after
  if [[ ! -s $junit ]]; then
    local why="pytest exited with code $rc before writing JUnit (checkpoint $ckpt; see the job's output for why)"
    if [[ $_TTT_STOP_SIGNAL == USR1 ]]; then
      why="time limit reached before the checks started (Slurm's USR1 came while pytest was starting; exit $rc): give the job a longer --time"
    elif [[ -n $_TTT_STOP_SIGNAL ]]; then
      why="the job was terminated (SIGTERM: time limit or scancel) before the checks started (pytest exit $rc)"
    fi
    ttt_write_error_junit "$junit" "$suite" "$why"
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
