"""The tuning section of the demo report: the recommendation, the verification and the plots of a
``hybridserve tune`` output folder, as self-contained HTML (images inlined)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

SHOWN_CANDIDATES = 10


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:49%">'


def _rows(candidates: list[dict[str, Any]]) -> str:
    rows = []
    for c in candidates[:SHOWN_CANDIDATES]:
        cells = [c["label"], f"{c['hit_ratio']:.1%}", f"{c['p99_ms']:.2f}", f"{c['monthly']['total']:.2f}",
                 "yes" if c["meets_slo"] else "no"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    return "".join(rows)


def tuning_section(out: Path) -> str:
    """HTML for the tuning results written to ``out`` (tuning.json, miss_ratio.png, cost.png)."""
    report = json.loads((out / "tuning.json").read_text())
    chosen = report.get("chosen")
    verdict = (f"Recommended: <b>{html.escape(chosen['label'])}</b>, hit ratio {chosen['hit_ratio']:.1%}, "
               f"p99 about {chosen['p99_ms']:.2f} ms, ${chosen['monthly']['total']:.2f} a month at {report['qps']:g} predictions/s."
               if chosen else f"No configuration meets p99 ≤ {report['slo_p99_ms']:g} ms.")
    env = "\n".join(f"{k}={v}" for k, v in (report.get("env") or {}).items())
    verify = report.get("verify")
    verify_html = ""
    if verify:
        m, pr = verify["measured"], verify["predicted"]
        verify_html = (f"<p>Verified by a load test of {html.escape(verify['candidate'])} ({verify['window']['requests']:,} "
                       f"requests of the trace: {html.escape(verify['window']['rule'])}): hit ratio {m['hit_ratio']:.2%} measured "
                       f"vs {pr['hit_ratio']:.2%} predicted ({verify['hit_ratio_pp']:.2f} percentage points), CPU "
                       f"{m['cpu_us_per_request']:.0f} vs {pr['cpu_us_per_request']:.0f} µs a request, p99 {m['p99_ms']:.1f} ms "
                       f"(SLO {report['slo_p99_ms']:g} ms): {'within' if verify['within_tolerance'] else 'outside'} the tolerances.</p>")
    return f"""<h2>Cache tuning (heavy profile, synthetic {html.escape(Path(report['trace']).name)})</h2>
<p>{verdict} SLO: p99 ≤ {report['slo_p99_ms']:g} ms. Per-tier CPU and latency come from the comparison's load tests
(the same runs as above); hit ratios from replaying the trace through the server's own cache code, beside libCacheSim's curves.</p>
<pre>{html.escape(env)}</pre>{verify_html}
<table><tr><th>configuration</th><th>hit ratio</th><th>p99 ms (est.)</th><th>$/month</th><th>meets SLO</th></tr>{_rows(report['candidates'])}</table>
{_img(out / 'miss_ratio.png')}{_img(out / 'cost.png')}"""
