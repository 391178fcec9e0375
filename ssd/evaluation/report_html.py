"""The HTML of the evaluation report (`ssd.evaluation.report`): one function per section, the page around them,
and the inline style sheet and script (class filter and sort of the galleries). Only standard HTML, CSS and
JavaScript, no external resource: the page must render from disk, offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ssd.evaluation.analysis import plot_confusion_matrix, plot_pr_curves
from ssd.evaluation.errors import ERROR_TYPES, SIZE_LIMITS, SIZE_NAMES, SPECIAL_ERROR_TYPES

ERROR_HELP = {
    "classification": "on an object of another class (IoU ≥ 0.5)",
    "localisation": "right class, box off (0.1 ≤ IoU ≤ 0.5 with an object of its class)",
    "both": "wrong class and box off (0.1 < IoU < 0.5 with another class, < 0.1 with its own)",
    "duplicate": "second detection of an object already found",
    "background": "on nothing (IoU ≤ 0.1 with every object)",
    "missed": "objects no detection found (largest first)",
}
SPECIAL_HELP = {
    "false_positive": "every false positive scored below every true positive (perfect precision)",
    "false_negative": "every object not found removed from the ground truth (perfect recall)",
}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if isinstance(value, float) else str(value)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], fmt: str = ".1f", caption: str = ""
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{esc(_num(v, fmt) if not isinstance(v, str) else v)}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_section(results: Mapping, analysis: Mapping, summary: Mapping, gts, class_names) -> str:
    parts = ["<section id=summary><h2>Summary</h2>"]
    for task, title in (("bbox", "COCO box AP (0-100)"), ("voc", "VOC AP (0-100)")):
        metrics = {k: v for k, v in results.get(task, {}).items() if "-" not in k}
        if metrics:
            parts.append(_table(list(metrics), [list(metrics.values())], caption=title))
    counts = np.zeros(len(class_names), np.int64)
    for g in gts:
        np.add.at(counts, g["labels"][~g["difficult"]], 1)
    rows = []
    for c, name in enumerate(class_names[1:], start=1):
        pc = analysis["per_class"][name]
        rows.append(
            [
                name,
                int(counts[c]),
                results.get("bbox", {}).get(f"AP-{name}"),
                summary["AP"][name],
                pc["TP"],
                pc["FP"],
                pc["FN"],
                *(None if pc[k] is None else 100 * pc[k] for k in ("precision", "recall", "F1")),
            ]
        )
    a = analysis["all_classes"]
    rows.append(
        [
            "(all)",
            int(counts.sum()),
            results.get("bbox", {}).get("AP"),
            summary["mAP"],
            a["TP"],
            a["FP"],
            a["FN"],
        ]
        + [None if a[k] is None else 100 * a[k] for k in ("precision", "recall", "F1")]
    )
    ap_header = f"AP{100 * summary['fg_iou']:.0f} ({summary['ap_metric']})"
    headers = ["class", "objects", "AP (COCO)", ap_header, "TP", "FP", "FN", "precision", "recall", "F1"]
    parts.append(_table(headers, rows, caption="Per class; TP/FP/FN and P/R/F1 (%) at the score threshold"))
    return "".join(parts) + "</section>"


# The plots of the error analysis, with the file names ErrorAnalysisEvaluator saves them under.
PLOT_FILES = {"pr_curves.png": plot_pr_curves, "confusion_matrix.png": plot_confusion_matrix}


def _png(plot, analysis: Mapping) -> str | None:
    """A plot function of ssd.evaluation.analysis drawn into a data URI; None without matplotlib."""
    try:
        buffer = io.BytesIO()
        plot(analysis, buffer)
    except ImportError:
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plots_section(analysis: Mapping, saved: Mapping[str, bytes] | None = None) -> str:
    """The PR curves and the confusion matrix; `saved` (PNG file name -> bytes, see PLOT_FILES) are embedded
    as they are instead of being drawn again."""
    figures = []
    for (file_name, plot), caption in zip(
        PLOT_FILES.items(), ("precision-recall curves", "confusion matrix"), strict=True
    ):
        if saved is not None and file_name in saved:
            uri = "data:image/png;base64," + base64.b64encode(saved[file_name]).decode("ascii")
        else:
            uri = _png(plot, analysis)
        if uri is None:
            figures.append(f"<p>(no {caption}: matplotlib is not installed)</p>")
        else:
            figures.append(
                f"<figure class=plot><img src='{uri}' alt='{caption}'><figcaption>{caption}</figcaption></figure>"
            )
    note = "<p class=note>Confusion matrix: rows are the ground truth, columns the prediction; row 0 are detections on background, column 0 missed objects.</p>"
    return "<section id=plots><h2>Curves and confusion</h2>" + "".join(figures) + note + "</section>"


def errors_section(summary: Mapping, class_names) -> str:
    names = class_names[1:]
    kinds = (*ERROR_TYPES, *SPECIAL_ERROR_TYPES)
    dap, counts, all_counts = summary["dAP"], summary["counts"], summary["error_counts"]
    dap_rows = [["(mAP)", *(dap[e]["all"] for e in kinds)]]
    dap_rows += [[n, *(dap[e]["per_class"][n] for e in kinds)] for n in names]
    count_rows = [["(all)", counts["tp"]["all"], *(counts[e]["all"] for e in ERROR_TYPES)]]
    count_rows += [
        [n, counts["tp"]["per_class"][n], *(counts[e]["per_class"][n] for e in ERROR_TYPES)] for n in names
    ]
    all_count_rows = [["(all)", *(all_counts[e]["all"] for e in ERROR_TYPES)]]
    all_count_rows += [[n, *(all_counts[e]["per_class"][n] for e in ERROR_TYPES)] for n in names]
    largest = max([v for v in (dap[e]["all"] for e in kinds) if v is not None] + [1e-9])

    def bar(error: str, value: float | None) -> str:  # a CSS bar as long as the dAP, relative to the largest
        width = 60 * max(0.0, value or 0.0) / largest
        shown = "–" if value is None else f"{value:+.2f}"
        return (
            f"<div class=bar><span class=label>{error}</span><span class=fill style='width:{width:.1f}%'></span>"
            f"<span class=value>{shown}</span></div>"
        )

    legend = "".join(f"<li><b>{e}</b>: {esc(ERROR_HELP[e])}</li>" for e in ERROR_TYPES)
    special = "".join(f"<li><b>{e}</b>: {esc(SPECIAL_HELP[e])}</li>" for e in SPECIAL_ERROR_TYPES)
    if summary["rules"] == "tide":
        rules = (
            "The definitions of TIDE (Bolya et al., <i>TIDE: A General Toolbox for Identifying Object Detection "
            "Errors</i>, ECCV 2020), checked against its package <code>tidecv</code>"
        )
    else:
        rules = "TIDE's error types and fixes on the VOC devkit's matching and AP (the VOC evaluator's mAP)"
    ap = f"AP{100 * summary['fg_iou']:.0f} ({esc(summary['ap_metric'])} AP)"
    return (
        "<section id=errors><h2>Error breakdown</h2>"
        f"<p class=rules>Rules: {rules}; IoU thresholds {summary['fg_iou']} (foreground) and "
        f"{summary['bg_iou']} (background); {ap} (rules={esc(summary['rules'])}, ssd/evaluation/errors.py).</p>"
        "<p>Each detection that is not a true positive has one type, tested in TIDE's order "
        "(localisation, classification, duplicate, background, both); each object nobody found is missed:</p>"
        f"<ul class=legend>{legend}</ul>"
        f"<h3>dAP: the {ap} points gained if every error of a type were fixed (all detections)</h3>"
        f"<div class=bars>{''.join(bar(e, dap[e]['all']) for e in ERROR_TYPES)}</div>"
        f"<p>Special errors (they overlap the six above):</p><ul class=legend>{special}</ul>"
        f"<div class=bars>{''.join(bar(e, dap[e]['all']) for e in SPECIAL_ERROR_TYPES)}</div>"
        + _table(["class", *kinds], dap_rows, fmt=".2f", caption="dAP by class (points, 0-100)")
        + _table(
            ["class", "TP", *ERROR_TYPES],
            count_rows,
            caption=f"Counts at score ≥ {summary['score_threshold']} (false positives by predicted class)",
        )
        + _table(
            ["class", *ERROR_TYPES],
            all_count_rows,
            caption="Error counts over every detection, as TIDE counts them (the dAP above)",
        )
        + "</section>"
    )


def sizes_section(summary: Mapping, results: Mapping, class_names) -> str:
    bbox = results.get("bbox", {})
    coco_ap = {"small": bbox.get("APs"), "medium": bbox.get("APm"), "large": bbox.get("APl")}
    limits = (
        f"< {SIZE_LIMITS[0]:.0f}",
        f"{SIZE_LIMITS[0]:.0f} – {SIZE_LIMITS[1]:.0f}",
        f"≥ {SIZE_LIMITS[1]:.0f}",
    )
    rows = []
    for name, limit in zip(SIZE_NAMES, limits, strict=True):
        s = summary["sizes"][name]
        recall = None if s["recall"] is None else 100 * s["recall"]
        rows.append(
            [
                name,
                limit,
                s["ground_truth"],
                s["found"],
                s["missed"],
                recall,
                s["false_positives"],
                coco_ap[name],
            ]
        )
    headers = ["size", "area (px²)", "objects", "found", "missed", "recall %", "false positives", "COCO AP"]
    by_class = [
        [n, *(None if v is None else 100 * v for v in summary["recall_by_size"][n].values())]
        for n in class_names[1:]
    ]
    return (
        "<section id=sizes><h2>By object size (COCO areas)</h2>"
        + _table(
            headers,
            rows,
            caption=f"At score ≥ {summary['score_threshold']}; false positives by their own box size",
        )
        + _table(
            ["class", *SIZE_NAMES],
            by_class,
            caption="Recall % by class and size (– : no object of that size)",
        )
        + "<p class=note>Low recall on one size while the others are fine usually means no prior fits those objects: "
        "compare MODEL.PRIORS.MIN_SIZES / MAX_SIZES with the object sizes (tools/visualize_priors.py).</p></section>"
    )


def galleries_section(items: list[dict], class_names, score_threshold: float) -> str:
    options = "<option value=''>all classes</option>" + "".join(
        f"<option value='{esc(n)}'>{esc(n)}</option>" for n in class_names[1:]
    )
    parts = [
        "<section id=galleries><h2>Galleries</h2>"
        f"<p>Detections at score ≥ {score_threshold}: <span class=pred>prediction</span>, "
        "<span class=gt>ground truth</span>, <span class=closest>closest detection of a missed object (any score)</span>.</p>"
    ]
    for kind in ERROR_TYPES:
        entries = [item for item in items if item["kind"] == kind]
        figures = "".join(
            f"<figure class=item data-class='{esc(it['class'])}' data-score='{it['score']:.4f}' data-file='{esc(it['file'])}'>"
            f"<img src='{it['thumbnail']}' alt='{esc(it['caption'])}'>"
            f"<figcaption><b>{esc(it['file'])}</b><br>{esc(it['caption'])}</figcaption></figure>"
            for it in entries
        )
        controls = (
            f"<select class=filter aria-label='class'>{options}</select>"
            "<select class=sort aria-label='order'><option value=score-desc>score, high first</option>"
            "<option value=score-asc>score, low first</option><option value=file>file name</option></select>"
            "<span class=shown></span>"
        )
        parts.append(
            f"<div class=gallery id=gallery-{kind} data-kind={kind}><h3>{kind}: {esc(ERROR_HELP[kind])}</h3>"
            f"<div class=controls>{controls}</div><div class=items>{figures or '<p>none</p>'}</div></div>"
        )
    return "".join(parts) + "</section>"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.8em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.8em 0}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.2em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.meta,.note{color:#555}
figure.plot{display:inline-block;margin:.5em}figure.plot img{max-width:600px}
.bars{max-width:700px}.bar{display:flex;align-items:center;margin:2px 0}
.bar .label{width:8em}.bar .fill{background:#d9534f;height:1em;display:inline-block}.bar .value{margin-left:.5em}
.items{display:flex;flex-wrap:wrap;gap:8px}
figure.item{margin:0;width:170px;border:1px solid #ddd;padding:4px;font-size:12px}
figure.item img{display:block;max-width:160px;max-height:160px}
.controls{margin:.3em 0}.controls select{margin-right:.5em}.shown{color:#555}
.pred{color:#e61414}.gt{color:#14a014}.closest{color:#e08a00}
"""

_SCRIPT = """
document.querySelectorAll('.gallery').forEach(function (gallery) {
  var box = gallery.querySelector('.items');
  var items = Array.prototype.slice.call(box.querySelectorAll('figure.item'));
  var filter = gallery.querySelector('select.filter');
  var sort = gallery.querySelector('select.sort');
  var shown = gallery.querySelector('.shown');
  function update() {
    var order = sort.value;
    items.sort(function (a, b) {
      if (order === 'file') { return a.dataset.file.localeCompare(b.dataset.file); }
      var d = parseFloat(a.dataset.score) - parseFloat(b.dataset.score);
      return order === 'score-asc' ? d : -d;
    });
    var count = 0;
    items.forEach(function (item) {
      var visible = !filter.value || item.dataset.class === filter.value;
      item.hidden = !visible;
      if (visible) { count += 1; }
      box.appendChild(item);
    });
    shown.textContent = count + ' of ' + items.length + ' shown';
  }
  filter.addEventListener('change', update);
  sort.addEventListener('change', update);
  update();
});
"""


def page(title: str, header: str, sections: list[str]) -> str:
    """The whole HTML document: `header` (HTML) and the sections, with the inline style sheet and script."""
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>{header}"
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>"
    )
