"""The report of a health run: text for reading, metrics.json for machines, index.html for looking.

``write_report`` is called when the pytest session (or ``ttt-checks demo``/``gate``) ends; an
interrupted run still writes everything it has, marked incomplete.
"""

from __future__ import annotations

from pathlib import Path

from ttt_checks.report.html import write_html
from ttt_checks.report.text import write_text_report


def write_report(run, incomplete: bool = False) -> dict[str, Path]:
    metrics = run.write_metrics(incomplete=incomplete)
    report = write_text_report(run, run.report_dir / "report.txt", incomplete=incomplete)
    html = write_html(run, run.report_dir / "index.html", incomplete=incomplete)
    return {"metrics": metrics, "report": report, "html": html}
