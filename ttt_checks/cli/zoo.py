"""``ttt-checks zoo``: list the reference checkpoint zoo, or rebuild it.

    ttt-checks zoo list [--broken] [--paths]   one line per checkpoint (name, verdict, checks)
    ttt-checks zoo build [--out DIR]           re-create every checkpoint (2 cores: 9.8 min with
                                               --workers 2, measured 2026-12-01)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")
    actions.required = True

    ls = actions.add_parser("list", help="list the zoo's checkpoints and the check each broken one must fail")
    ls.add_argument("--broken", action="store_true", help="only the broken checkpoints")
    ls.add_argument("--paths", action="store_true", help="print only checkpoint directories, one per line (for scripts)")
    ls.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: the committed fixtures/zoo)")
    ls.set_defaults(func=_list)

    build = actions.add_parser("build", help="re-create every zoo checkpoint from scratch (seeded, CPU)")
    build.add_argument("--out", type=Path, default=None, help="output directory (default: the committed fixtures/zoo)")
    build.add_argument("--no-measure", action="store_true", help="skip measuring each checkpoint after building it")
    build.add_argument("--threads", type=int, default=2, help="CPU threads for training (default 2)")
    build.add_argument("--workers", type=int, default=1,
                       help="fine-tune this many checkpoints at once in separate processes, sharing --threads (default 1)")
    build.add_argument("--only", nargs="+", metavar="NAME", help="rebuild only these checkpoints (iterating on a recipe)")
    build.add_argument("--reuse-base", action="store_true", help="keep an existing base/ made by the same pretraining recipe")
    build.add_argument("--generation", choices=("recall", "dialogue", "all"), default="recall",
                       help="which entries: the zoo of the embedded default (recall, default), the first generation "
                            "kept for the old reference format (dialogue), or both")
    build.set_defaults(func=_build)


def _list(args: argparse.Namespace) -> int:
    from ttt_checks.models.reference.zoo import DEFAULT_ZOO_DIR, list_zoo

    zoo_dir = args.zoo or DEFAULT_ZOO_DIR
    try:
        rows = list_zoo(zoo_dir, broken=True if args.broken else None)
    except FileNotFoundError as exc:
        print(f"ttt-checks zoo: {exc}", file=sys.stderr)
        return 1
    for entry, path in rows:
        if args.paths:
            print(path)
            continue
        verdict = "healthy" if entry.healthy else "broken "
        checks = ", ".join(entry.expected_failures) if entry.expected_failures else "every check passes"
        print(f"{entry.name:34s} {verdict}  {entry.summary}  [{checks}]")
    return 0


def _build(args: argparse.Namespace) -> int:
    from ttt_checks.models.reference.zoo import DEFAULT_ZOO_DIR, build_zoo

    out = args.out or DEFAULT_ZOO_DIR
    try:
        timings = build_zoo(out, log=print, measure_entries=not args.no_measure, threads=args.threads,
                            only=args.only, reuse_base=args.reuse_base, workers=args.workers,
                            generation=args.generation)
    except KeyError as exc:
        print(f"ttt-checks zoo build: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"zoo written to {out} in {timings['total']:.0f}s")
    return 0
