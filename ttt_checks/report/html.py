"""A self-contained index.html: verdicts, plots embedded as data URIs, the sweep with audio players.

Rendered from metrics.json plus the files it names, like the text report.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ttt_checks.diagnosis import diagnosis_dict
from ttt_checks.report.files import write_text_atomic
from ttt_checks.verdict import fmt, status_label

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1em 0} td,th{border:1px solid #ddd;padding:4px 8px;font-size:14px;vertical-align:top}
th{background:#f4f4f4;text-align:left} .PASS{color:#137333;font-weight:600} .WARN{color:#8a6100;font-weight:600} .FAIL{color:#c5221f;font-weight:600}
.banner{padding:.6em 1em;border-radius:6px;font-weight:600;display:inline-block}
.ok{background:#e6f4ea;color:#137333} .bad{background:#fce8e6;color:#c5221f} .warn{background:#fef7e0;color:#8a6100}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} audio{height:28px}
"""


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _inputs_html(inputs: dict[str, Any] | None) -> list[str]:
    """What the model was fed, and every conversion made to feed it (a resampled or downmixed
    input is shown, never hidden)."""
    if not inputs:
        return []
    e = html.escape
    notes = "".join(f"<br><span class='WARN'>note:</span> {e(str(n))}" for n in inputs.get("notes", []))
    return [f"<p class='sub'>input {e(str(inputs.get('description')))}{notes}</p>"]


def _diagnosis_html(diagnosis: dict[str, Any]) -> list[str]:
    """The first section: the ranked findings (ttt_checks.diagnosis), or the one healthy line."""
    e = html.escape
    parts = ["<h2>Diagnosis</h2>", f"<p class='diag-summary'><b>{e(str(diagnosis.get('summary', '')))}</b></p>"]
    findings = diagnosis.get("findings") or []
    if findings:
        parts.append("<table><tr><th>#</th><th>finding</th><th>symptom</th><th>likely cause</th><th>what to change</th>"
                     "<th>confidence</th><th>evidence</th></tr>")
        for f in findings:
            change = e(str(f.get("fix", "")))
            if f.get("config_key"):
                change += f"<br><code>{e(str(f['config_key']))}" + (f" = {e(fmt(f['value']))}" if f.get("value") is not None else "") + "</code>"
            files = "<br>".join(f"<code>{e(Path(str(p)).name)}</code>" for p in (f.get("evidence") or [])[:6])
            parts.append(f"<tr><td>{f.get('rank')}</td><td class='{'FAIL' if f.get('rank') == 1 else ''}'>{e(str(f.get('title')))}</td>"
                         f"<td>{e(str(f.get('symptom')))}</td><td>{e(str(f.get('cause')))}</td><td>{change}</td>"
                         f"<td>{e(str(f.get('confidence')))}: {e(str(f.get('confidence_why')))}</td><td>{files}</td></tr>")
        parts.append("</table>")
    for s in diagnosis.get("suppressed") or []:
        parts.append(f"<p class='sub'>not shown: {e(s['rule'])} (overridden by {e(s['by'])})</p>")
    if diagnosis.get("missing_measurements"):
        parts.append(f"<p class='sub'>not measured in this run: {e(', '.join(diagnosis['missing_measurements']))}</p>")
    return parts


def render(metrics: dict[str, Any], report_dir: Path) -> str:
    e = html.escape
    verdicts = [v for vs in metrics.get("verdicts", {}).values() for v in vs]
    failed = [v for v in verdicts if not v["ok"]]
    if not metrics.get("complete", True):
        banner = '<span class="banner warn">INCOMPLETE: the run was interrupted</span>'
    elif failed:
        banner = f'<span class="banner bad">UNHEALTHY: {len(failed)} of {len(verdicts)} verdicts failed</span>'
    elif verdicts:
        banner = f'<span class="banner ok">HEALTHY: all {len(verdicts)} verdicts passed</span>'
    else:
        banner = '<span class="banner warn">NO CHECK RAN</span>'
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ttt-checks report</title><style>{_CSS}</style></head><body>",
             "<h1>ttt-checks health report</h1>",
             f"<p class='sub'>checkpoint <code>{e(str(metrics.get('checkpoint') or 'embedded default'))}</code> · adapter {e(str(metrics.get('adapter')))}</p>",
             *_inputs_html(metrics.get("inputs")),
             banner,
             *_diagnosis_html(metrics.get("diagnosis") or diagnosis_dict(metrics)),
             "<h2>Verdicts</h2><table><tr><th>check</th><th>layer</th><th>result</th><th>measured</th><th>threshold</th><th>explanation</th></tr>"]
    for v in verdicts:
        status = status_label(v)
        parts.append(f"<tr><td>{e(v['name'])}</td><td>{e(v.get('layer') or '')}</td><td class='{status}'>{status}</td>"
                     f"<td>{e(fmt(v['measured'], missing=''))}</td><td>{e(fmt(v['threshold'], missing=''))}</td><td>{e(v['explanation'])}</td></tr>")
    parts.append("</table>")
    sweep = metrics.get("sweep")
    if sweep:
        parts.append("<h2>Gating sweep</h2><table><tr><th>raw alpha</th><th>tanh(alpha)</th><th>words</th>"
                     "<th>transcript (Whisper)</th><th>model text</th><th>audio</th></tr>")
        for row in sweep:
            wav = report_dir / row["wav"] if row.get("wav") else None
            audio = f"<audio controls src='{_data_uri(wav, 'audio/wav')}'></audio>" if wav and wav.is_file() else "(no audio)"
            parts.append(f"<tr><td>{e(row['label'])}</td><td>{row['gate_tanh']:.3f}</td><td>{row['words']}</td>"
                         f"<td>{e(row['transcript'])}</td><td>{e(str(row.get('model_text') or ''))}</td><td>{audio}</td></tr>")
        parts.append("</table>")
    pngs = sorted(report_dir.rglob("*.png"))
    if pngs:
        parts.append("<h2>Plots</h2>")
        for p in pngs:
            parts.append(f"<figure><img alt='{e(p.name)}' src='{_data_uri(p, 'image/png')}'><figcaption>{e(str(p.relative_to(report_dir)))}</figcaption></figure>")
    parts.append(f"<p class='sub'>Files: <code>{e(str(report_dir))}</code></p></body></html>")
    return "\n".join(parts)


def write_html(metrics: dict[str, Any], report_dir: Path) -> Path:
    return write_text_atomic(report_dir / "index.html", render(metrics, report_dir))
