"""``ttt-checks figure5 RECORD.npz...``: print what a saved Figure-5 record holds."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("records", nargs="+", help="Figure-5 .npz files written by a health run")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ttt_checks.metrics.figure5 import record_summary
    from ttt_checks.ttt.figure5 import Figure5Error, Figure5Record

    status = 0
    for path in args.records:
        try:
            record = Figure5Record.load(path)
        except Figure5Error as exc:
            print(f"ttt-checks figure5: {exc}")
            status = 1
            continue
        summary = {"file": path, "layer": record.layer, **record_summary(record)}
        if args.json:
            print(json.dumps(summary))
        else:
            print(
                f"{path}: layer {record.layer}, {record.num_positions} positions "
                f"(first {int(record.positions[0])}, last {int(record.positions[-1])}); "
                f"mean l0 {summary['l0']:.4g}, lprev {summary['lprev']:.4g}, lafter {summary['lafter']:.4g}, "
                + (f"lmean {summary['lmean']:.4g}; " if record.lmean is not None else "lmean not in this record (saved before it was captured); ") +
                f"l0>lprev at {summary['frac_l0_gt_lprev']:.0%}, lprev>lafter at {summary['frac_lprev_gt_lafter']:.0%} "
                f"of positions; {int(summary['nonfinite'])} non-finite values"
            )
    return status
