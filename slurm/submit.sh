#!/usr/bin/env bash
# Submit the health checks of a checkpoint, or of every checkpoint of a training run, as a Slurm
# job array, and chain a JUnit merge job after it with --dependency=afterok.
#
#   slurm/submit.sh [options] CKPT_OR_RUN_DIR [-- pytest args...]
#
#   -r, --report-root DIR   where reports go, one subfolder per task (default:
#                           $TTT_REPORT_ROOT, else <clone>/reports/slurm/<date>-<name>); must be
#                           on a filesystem the compute nodes share, and hold no earlier JUnit
#   -p, --partition NAME    partition (default: the cluster's default)
#   -g, --gpus N            GPUs per task (default 0: CPU). N > 0 requests --gres=gpu:N and
#                           makes a node without a visible GPU a usage error (--require-gpu)
#   -t, --time T            time limit per task (default 01:00:00); USR1 comes 120 s before it
#   -c, --cpus N            --cpus-per-task (default: the cluster's default)
#   -m, --max-parallel K    at most K tasks at once (--array=0-N%K)
#       --sbatch-arg ARG    extra sbatch option for every job (repeatable): --account=..., --mem=...
#       --wait              wait for the merge job; exit with its code (0 all healthy, 1 not,
#                           2 a checkpoint was not judged)
#       --dry-run           print the sbatch commands instead of running them
#   -h, --help
#
# A directory holding config.json or consolidated/ is one checkpoint; any other directory is a
# run whose checkpoints `ttt-checks watch DIR --list` finds (checkpoints/checkpoint_*/...).
# The list is frozen into REPORT_ROOT/checkpoints.txt at submission. Settings of the jobs are
# environment variables (TTT_PYTHON, TTT_SETUP, TTT_DEVICE, TTT_TEST_TIMEOUT, ...: slurm/common.sh);
# they travel with the jobs (--export=ALL).
set -euo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "submit.sh: $1" >&2; exit "${2:-4}"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
report_root=${TTT_REPORT_ROOT:-}
partition=
gpus=0
time_limit=01:00:00
cpus=
max_parallel=
wait_for_it=0
dry_run=0
sbatch_extra=()
target=
pytest_args=()

need_value() { (( $2 >= 2 )) || die "$1 needs a value (see --help)"; }
while (( $# > 0 )); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --option=value -> --option value
    -r|--report-root) need_value "$1" $#; report_root=$2; shift 2 ;;
    -p|--partition) need_value "$1" $#; partition=$2; shift 2 ;;
    -g|--gpus) need_value "$1" $#; gpus=$2; shift 2 ;;
    -t|--time) need_value "$1" $#; time_limit=$2; shift 2 ;;
    -c|--cpus) need_value "$1" $#; cpus=$2; shift 2 ;;
    -m|--max-parallel) need_value "$1" $#; max_parallel=$2; shift 2 ;;
    --sbatch-arg) need_value "$1" $#; sbatch_extra+=("$2"); shift 2 ;;
    --wait) wait_for_it=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $target ]] || die "one checkpoint or run directory, got $target and $1"; target=$1; shift ;;
  esac
done
[[ -n $target ]] || { usage >&2; die "missing CKPT_OR_RUN_DIR"; }
[[ -d $target ]] || die "$target: no such directory"
[[ $gpus =~ ^[0-9]+$ ]] || die "--gpus $gpus: expected a whole number (0 for CPU)"
[[ -z $cpus || $cpus =~ ^[1-9][0-9]*$ ]] || die "--cpus $cpus: expected a positive whole number"
[[ -z $max_parallel || $max_parallel =~ ^[1-9][0-9]*$ ]] || die "--max-parallel $max_parallel: expected a positive whole number"

export TTT_CHECKS_REPO=${TTT_CHECKS_REPO:-$repo}
export TTT_PYTHON=${TTT_PYTHON:-python3}
"$TTT_PYTHON" -c 'import ttt_checks, pytest_timeout, junitparser' 2>/dev/null \
  || die "TTT_PYTHON=$TTT_PYTHON cannot import ttt_checks, pytest_timeout and junitparser: activate the ttt-checks environment or set TTT_PYTHON"
target=$(cd "$target" && pwd)
if [[ -z $report_root ]]; then
  report_root=$TTT_CHECKS_REPO/reports/slurm/$(date +%Y%m%d-%H%M%S)-$(basename "$target")
fi
mkdir -p "$report_root/logs"
report_root=$(cd "$report_root" && pwd)
shopt -s nullglob
stale=("$report_root"/*/junit-*.xml)
(( ${#stale[@]} == 0 )) || die "$report_root already holds JUnit of an earlier submission (${stale[0]}): use a new --report-root"
export TTT_REPORT_ROOT=$report_root

manifest=$report_root/checkpoints.txt
"$TTT_PYTHON" -m ttt_checks.cli watch "$target" --list > "$manifest.tmp" \
  || die "listing the checkpoints of $target failed (see above)"
mv -f "$manifest.tmp" "$manifest"
count=$(grep -c . "$manifest" || true)
(( count > 0 )) || die "$target holds no checkpoint (expected config.json, consolidated/, or checkpoint_* folders)" 5

common=(--export=ALL)
[[ -n $partition ]] && common+=("--partition=$partition")
common+=("${sbatch_extra[@]}")
array_opts=("--array=0-$(( count - 1 ))${max_parallel:+%$max_parallel}" "--time=$time_limit"
            "--output=$report_root/logs/%x_%A_%a.out")
[[ -n $cpus ]] && array_opts+=("--cpus-per-task=$cpus")
if (( gpus > 0 )); then
  array_opts+=("--gres=gpu:$gpus")
  export TTT_REQUIRE_GPU=1
else
  export TTT_REQUIRE_GPU=${TTT_REQUIRE_GPU:-0}
fi
array_cmd=(sbatch --parsable "${common[@]}" "${array_opts[@]}" "$repo/slurm/array.sbatch" "$manifest" "${pytest_args[@]}")
merge_opts=(--kill-on-invalid-dep=yes "--output=$report_root/logs/%x-%j.out")

if (( dry_run )); then
  printf '%q ' "${array_cmd[@]}"; echo
  printf '%q ' sbatch --parsable "${common[@]}" --dependency=afterok:ARRAY_JOB_ID "${merge_opts[@]}" \
    "$repo/slurm/merge_junit.sbatch" "$report_root" "$count"; echo
  exit 0
fi

array_id=$("${array_cmd[@]}") || die "sbatch of the array failed" 3
array_id=${array_id%%;*}
merge_cmd=(sbatch --parsable "${common[@]}" "--dependency=afterok:$array_id" "${merge_opts[@]}")
(( wait_for_it )) && merge_cmd+=(--wait)
merge_cmd+=("$repo/slurm/merge_junit.sbatch" "$report_root" "$count")
{
  echo "submitted: $(date -Is) by $(id -un) from $(hostname -s)"
  echo "target: $target ($count checkpoint(s), list in $manifest)"
  echo "array job: $array_id"
} > "$report_root/submission.txt"
echo "submit.sh: array job $array_id: $count checkpoint(s) of $target; reports in $report_root"
if (( ! wait_for_it )); then
  merge_id=$("${merge_cmd[@]}") || die "sbatch of the merge job failed (the array $array_id is queued)" 3
  merge_id=${merge_id%%;*}
  echo "merge job: $merge_id" >> "$report_root/submission.txt"
  echo "submit.sh: merge job $merge_id (after the array succeeds): $report_root/merged.junit.xml, summary.txt"
  exit 0
fi
rc=0
"${merge_cmd[@]}" || rc=$?
if [[ -r $report_root/summary.txt ]]; then
  cat "$report_root/summary.txt"
  exit "$rc"
fi
# A merge job cancelled before it started (its dependency failed) makes `sbatch --wait` return 0:
# no summary means no verdict, whatever sbatch said.
echo "submit.sh: the merge job wrote no summary (sbatch exit $rc): an array task failed to run," \
     "see $report_root/*/junit-*.xml and $report_root/logs/" >&2
exit 2
