"""``dbtk eval --report DIR``: one self-contained HTML page (``index.html``, overlays in ``images/``) per evaluation.

The page needs nothing but a browser — no server, no external script, style sheet or font — so a report can be
copied, archived, attached, and two of them (two checkpoints on the same split) opened side by side: the
per-image table starts in image-name order in both, and clicking a column header sorts it.

Precision/recall against ``box_thresh`` needs every box with its score: ``dbtk eval`` runs the detector once at
``box_thresh = 0`` and :func:`write_report` filters by score. That filter is exactly what post-processing does
with a higher ``box_thresh`` (it keeps boxes whose score is at least the threshold, and nothing else depends on
it), so the scores at the configured threshold — the ones printed — equal those of a run without ``--report``.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk import __version__
from dbtk.infer.evaluate import EvalResult, draw_overlay, scored_samples
from dbtk.infer.metrics import ImageScore, Summary, evaluate_image, summarize
from dbtk.infer.postprocess import Detections

if TYPE_CHECKING:
    from dbtk.data.reader import Reader

#: box_thresh values of the precision/recall sweep.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))
#: Overlays are shrunk to this longest side: a report of a few hundred pages stays a few tens of MB.
OVERLAY_SIDE = 1600


def at_threshold(detections: Detections, box_thresh: float) -> Detections:
    """The boxes post-processing keeps at ``box_thresh`` (score >= threshold), in their original order."""
    keep = detections.scores >= box_thresh
    return Detections([p for p, k in zip(detections.polygons, keep, strict=True) if k], detections.scores[keep])


def write_report(
    folder: Path,
    reader: Reader,
    detections: Mapping[str, Detections],
    result: EvalResult,
    box_thresh: float,
    title: str,
    settings: Mapping[str, Any],
) -> tuple[EvalResult, dict[str, Detections]]:
    """Score ``detections`` (found at box_thresh 0) at ``box_thresh`` and across :data:`THRESHOLDS`, write the report.

    Returns ``result`` with its per-image scores and summary at ``box_thresh``, and the detections kept at it.
    The split is read again through the same label path as the evaluation, for the ground truth and the pixels
    of the overlays (keeping every decoded image of a split in memory is not an option).
    """
    import cv2

    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    sweep: dict[float, list[ImageScore]] = {t: [] for t in THRESHOLDS}
    scores: list[ImageScore] = []
    kept: dict[str, Detections] = {}
    files: dict[str, str] = {}
    reread = EvalResult(summarize([]), [], 0.0)  # problems of the second read are already in result
    for item in scored_samples(reader, reread):
        if item is None or item.name not in detections:
            continue
        found = detections[item.name]
        gts, ignore = item.labels.polygons, item.labels.ignore
        for threshold in THRESHOLDS:
            sweep[threshold].append(evaluate_image(gts, ignore, at_threshold(found, threshold).polygons))
        chosen = at_threshold(found, box_thresh)
        score = evaluate_image(gts, ignore, chosen.polygons, name=item.name)
        overlay = draw_overlay(item.image, chosen, score, gts, ignore)
        scale = OVERLAY_SIDE / max(overlay.shape[:2])
        if scale < 1:
            overlay = cv2.resize(overlay, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        files[item.name] = f"images/{len(files):05d}_{_safe(Path(item.name).stem)}.jpg"
        cv2.imwrite(str(folder / files[item.name]), overlay, [cv2.IMWRITE_JPEG_QUALITY, 85])
        scores.append(score)
        kept[item.name] = chosen
    result.images, result.summary = scores, summarize(scores)
    curve = [(threshold, summarize(sweep[threshold])) for threshold in THRESHOLDS]
    data = {**result.as_dict(), "box_thresh": box_thresh, "settings": dict(settings), "title": title,
            "curve": [{"box_thresh": t, **s.as_dict()} for t, s in curve]}
    (folder / "report.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    (folder / "index.html").write_text(_page(result, curve, files, box_thresh, title, settings), encoding="utf-8")
    return result, kept


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


# ---------------------------------------------------------------------------------------------- the page
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 0; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 12px 20px; }
header h1 { font-size: 18px; margin: 0 0 4px; overflow-wrap: anywhere; }
header p { margin: 0; color: #b9c1d0; font-size: 13px; }
main { padding: 16px 20px; }
section { margin-bottom: 28px; }
h2 { font-size: 16px; margin: 0 0 8px; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
#images th { cursor: pointer; user-select: none; background: #eef0f3; position: sticky; top: 0; }
#images th[aria-sort=ascending]::after { content: " ▲"; } #images th[aria-sort=descending]::after { content: " ▼"; }
.summary td { font-size: 16px; } .summary td.h { font-weight: 700; }
.legend span { display: inline-block; margin-right: 14px; } .legend i { display: inline-block; width: 18px; height: 4px;
  vertical-align: middle; margin-right: 5px; }
figure { display: inline-block; margin: 0 12px 16px 0; background: #fff; padding: 6px; border: 1px solid #e3e6ea;
  vertical-align: top; } figure img { max-width: 560px; max-height: 420px; display: block; }
figcaption { font-size: 12px; color: #4b5565; margin-top: 4px; }
.problems { color: #8a4b00; }
"""

#: Sorting the per-image table: numbers numerically, names as text; the first click sorts worst (lowest) first.
_SCRIPT = """
document.querySelectorAll("#images th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  th.closest("tr").querySelectorAll("th").forEach((other) => other.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const key = (row) => { const cell = row.cells[column]; return cell.dataset.v !== undefined ? Number(cell.dataset.v) : cell.textContent; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    const order = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  body.append(...rows);
}));
"""

#: Colours of draw_overlay (BGR there), for the legend.
_LEGEND = (("#00c800", "ground truth, matched"), ("#ff8c00", "ground truth, missed"), ("#a0a0a0", "don't care (###)"),
           ("#0078ff", "detection, matched"), ("#ff0000", "false detection"))


def _page(result: EvalResult, curve: list[tuple[float, Summary]], files: Mapping[str, str], box_thresh: float,
          title: str, settings: Mapping[str, Any]) -> str:
    e = html.escape
    s = result.summary
    rate = f"{s.images / result.seconds:.2f}" if result.seconds else "-"
    described = ", ".join(f"{k} {e(str(v))}" for k, v in settings.items())
    best_t, best = max(curve, key=lambda point: point[1].hmean)
    rows = []
    for score in sorted(result.images, key=lambda x: x.name):
        anchor = e(files[score.name])
        rows.append(
            f'<tr><td><a href="#{anchor}">{e(score.name)}</a></td>'
            + "".join(f'<td data-v="{v:.6f}">{v:.3f}</td>' for v in (score.precision, score.recall, score.hmean))
            + "".join(f'<td data-v="{v}">{v}</td>' for v in (score.matched, score.gt_care, score.det_care,
                                                             len(score.missed), len(score.false_positives)))
            + "</tr>"
        )
    figures = [
        f'<figure id="{e(files[score.name])}"><img src="{e(files[score.name])}" loading="lazy" alt="{e(score.name)}">'
        f"<figcaption>{e(score.name)} — hmean {score.hmean:.3f}, {len(score.missed)} missed, "
        f"{len(score.false_positives)} false</figcaption></figure>"
        for score in sorted(result.images, key=lambda x: x.name)
    ]
    problems = "".join(f"<li>{e(p.where())}: {e(p.reason)}: {e(p.detail)}</li>" for p in result.problems[:200])
    bold = ' style="font-weight:700"'
    curve_rows = "".join(
        f"<tr{bold if abs(t - box_thresh) < 1e-9 else ''}><td>{t:.2f}</td><td>{c.precision:.4f}</td>"
        f"<td>{c.recall:.4f}</td><td>{c.hmean:.4f}</td><td>{c.det_care}</td></tr>"
        for t, c in curve
    )
    legend = "".join(f'<span><i style="background:{colour}"></i>{label}</span>' for colour, label in _LEGEND)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} — dbtk eval report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body>
<header><h1>{e(title)}</h1>
<p>dbtk {__version__} · {time.strftime("%Y-%m-%d %H:%M")} · {described} · box_thresh {box_thresh:g}</p></header>
<main>
<section id="summary"><h2>Summary (ICDAR2015 IoU protocol)</h2>
<table class="summary"><tr><th>precision</th><th>recall</th><th>hmean</th><th>matched</th><th>gt (care)</th>
<th>det (care)</th><th>images</th><th>images/s</th></tr>
<tr><td>{s.precision:.4f}</td><td>{s.recall:.4f}</td><td class="h">{s.hmean:.4f}</td><td>{s.matched}</td>
<td>{s.gt_care}</td><td>{s.det_care}</td><td>{s.images}</td><td>{rate}</td></tr></table>
{f'<p class="problems">{sum(result.skipped.values())} images left out; {len(result.problems)} problems (listed at the end)</p>' if result.problems else ''}
</section>
<section id="curve"><h2>Precision and recall against box_thresh</h2>
{_chart(curve, box_thresh)}
<p>Best hmean {best.hmean:.4f} at box_thresh {best_t:.2f}; this run used {box_thresh:g}
(re-score at another with <code>dbtk eval MODEL --set postprocess.box_thresh=T</code>).</p>
<details><summary>numbers</summary><table><tr><th>box_thresh</th><th>precision</th><th>recall</th><th>hmean</th>
<th>det (care)</th></tr>{curve_rows}</table></details>
</section>
<section><h2>Per image</h2><p>Click a column to sort; click a name to see its overlay.</p>
<table id="images"><thead><tr><th>image</th><th>P</th><th>R</th><th>H</th><th>matched</th><th>gt</th><th>det</th>
<th>missed</th><th>false</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></section>
<section id="overlays"><h2>Overlays</h2><p class="legend">{legend}</p>
{chr(10).join(figures)}
</section>
{f'<section><h2>Problems</h2><ul class="problems">{problems}</ul></section>' if problems else ''}
</main><script>{_SCRIPT}</script></body></html>
"""


def _chart(curve: list[tuple[float, Summary]], box_thresh: float) -> str:
    """An inline SVG line chart: precision, recall and hmean over the thresholds, the run's threshold marked."""
    width, height, pad = 560, 260, 36

    def x(t: float) -> float:
        return pad + t * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad - v * (height - 2 * pad)

    lines = []
    for i, (key, colour) in enumerate((("precision", "#2563eb"), ("recall", "#d97706"), ("hmean", "#111827"))):
        points = " ".join(f"{x(t):.1f},{y(getattr(s, key)):.1f}" for t, s in curve)
        lines.append(f'<polyline class="{key}" points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        lines.append(f'<text x="{pad + 90 * i}" y="14" fill="{colour}" font-size="12" font-weight="600">— {key}</text>')
    grid = "".join(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e6ea"/>'
        f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.1f}</text>'
        for v in np.linspace(0, 1, 6)
    )
    ticks = "".join(f'<text x="{x(t):.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">{t:.1f}</text>'
                    for t in np.linspace(0, 1, 6))
    marker = (f'<line x1="{x(box_thresh):.1f}" x2="{x(box_thresh):.1f}" y1="{pad}" y2="{height - pad}" '
              f'stroke="#b42318" stroke-dasharray="4 3"/>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="precision and recall against box_thresh" '
            f'style="background:#fff">{grid}{ticks}{marker}{"".join(lines)}'
            f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">box_thresh</text></svg>')
