"""Measure how far a rebuilt zoo checkpoint moves when only the floating-point environment changes.

Training is chaotic: a different summation order (another CPU's SIMD kernels, another thread
count) changes the last bits of one step and the trajectory drifts from there. This script
rebuilds the same entries from the same seed under several environments, each in its own process:

- ``ATEN_CPU_CAPABILITY`` = default / avx2 / avx512 (torch's CPU kernels as another machine picks them),
- intra-op threads 1 and 2 (``build_zoo(threads=...)``, which is what the zoo build sets),
- ``torch.use_deterministic_algorithms`` on and off,

and prints, per entry, the measured outer losses (learned gate, gate 0) in each environment and
their spread (max - min). The zoo-rebuild test's loss tolerance is derived from that spread
(fixtures/zoo/README.md records it).

    python scripts/zoo_spread.py --entries healthy-seed0 lr-near-zero [--with-base] [--out DIR]

Without ``--with-base`` the committed ``base/`` is copied in and only the TTT fine-tunes are
rebuilt (minutes); with it the base is pretrained again in every environment too (the full
recipe, ~5 minutes more per environment on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, torch
from ttt_checks.models.reference.zoo import build_zoo
out, threads, deterministic, reuse = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
entries = sys.argv[5:]
torch.use_deterministic_algorithms(deterministic)
build_zoo(out, log=None, measure_entries=True, threads=threads, only=entries, reuse_base=reuse)
result = {}
for name in entries:
    measured = json.load(open(f"{out}/{name}/config.json"))["measured"]["summary"]
    result[name] = {k: measured.get(k) for k in ("val_loss_learned", "val_loss_gate0", "val_loss_token_by_token")}
print("RESULT " + json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "entries": result}))
"""

SETTINGS = [
    {"capability": "default", "threads": 1, "deterministic": False},
    {"capability": "avx2", "threads": 2, "deterministic": False},
    {"capability": "avx512", "threads": 2, "deterministic": False},
    {"capability": "avx512", "threads": 1, "deterministic": True},
]


def run_setting(setting: dict, entries: list[str], with_base: bool, work: Path) -> dict:
    out = work / f"{setting['capability']}-t{setting['threads']}-d{int(setting['deterministic'])}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if not with_base:
        from ttt_checks.models.reference.zoo import BASE_NAME, DEFAULT_ZOO_DIR

        shutil.copytree(DEFAULT_ZOO_DIR / BASE_NAME, out / BASE_NAME)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": setting["capability"], "OMP_NUM_THREADS": str(setting["threads"])}
    cmd = [sys.executable, "-c", CHILD, str(out), str(setting["threads"]), str(int(setting["deterministic"])),
           "0" if with_base else "1", *entries]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"zoo_spread: the build under {setting} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return {**setting, **json.loads(line[len("RESULT "):])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=["healthy-seed0"], help="zoo entries to rebuild")
    parser.add_argument("--with-base", action="store_true", help="pretrain the base again in every setting")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--settings", type=int, nargs="+", default=None,
                        help=f"indices into the settings list (default all): " + "; ".join(
                            f"{i}: {s['capability']} t{s['threads']}{' deterministic' if s['deterministic'] else ''}"
                            for i, s in enumerate(SETTINGS)))
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="zoo-spread-"))
    runs = []
    for setting in [SETTINGS[i] for i in (args.settings or range(len(SETTINGS)))]:
        runs.append(run_setting(setting, args.entries, args.with_base, work))
        r = runs[-1]
        print(f"{r['capability']:>8} (asked {setting['capability']}) threads {r['threads']} deterministic "
              f"{r['deterministic']!s:5}: " + "; ".join(f"{n} {v['val_loss_learned']} / {v['val_loss_gate0']}"
                                                         for n, v in r["entries"].items()), flush=True)
    spread = {}
    for name in args.entries:
        spread[name] = {}
        for key in ("val_loss_learned", "val_loss_gate0", "val_loss_token_by_token"):
            values = [r["entries"][name][key] for r in runs if r["entries"][name][key] is not None]
            spread[name][key] = (max(values) - min(values)) if values else None
    print(json.dumps({"with_base": args.with_base, "spread": spread}, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"with_base": args.with_base, "runs": runs, "spread": spread}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
