"""The report of a health run: text for reading, metrics.json for machines, index.html for looking.

Everything is rendered from the metrics a run measured, so parallel workers (pytest-xdist)
each write their own subfolder and :func:`merge_workers` combines them into one report that
reads like a serial run's. An interrupted run still writes what it has, marked incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttt_checks.diagnosis import diagnosis_dict
from ttt_checks.report.files import write_json_atomic
from ttt_checks.report.html import write_html
from ttt_checks.report.text import write_text_report


def write_report(metrics: dict[str, Any], report_dir: Path) -> dict[str, Path]:
    """metrics.json, report.txt and index.html; the diagnosis (ttt_checks.diagnosis) is added to
    ``metrics["diagnosis"]`` first, so every view shows the same ranked findings."""

    report_dir = Path(report_dir)
    metrics["diagnosis"] = diagnosis_dict(metrics)
    return {
        "metrics": write_json_atomic(report_dir / "metrics.json", metrics),
        "report": write_text_report(metrics, report_dir / "report.txt"),
        "html": write_html(metrics, report_dir),
    }


def merge_workers(report_dir: Path, complete: bool = True) -> dict[str, Any] | None:
    """Combine ``<report_dir>/gw*/metrics.json`` of xdist workers; None when there are none."""
    parts = []
    for path in sorted(Path(report_dir).glob("gw*/metrics.json")):
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise RuntimeError(f"{path}: a worker's metrics.json is unreadable ({exc})") from exc
    if not parts:
        return None
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif key not in merged or value not in (None, [], {}):
                merged[key] = value
    merged["workers"] = len(parts)
    merged["complete"] = complete and all(p.get("complete", True) for p in parts)
    merged["report_dir"] = str(report_dir)
    return merged
