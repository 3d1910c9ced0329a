"""The batch report: built part by part (memory grows by a few bytes per image,
not per prediction), then written as JSON and as one self-contained HTML page
(inline SVG charts and thumbnails, no scripts, no external files) people can
open anywhere.

When the input's folders are class names (the test split, any labelled
folder), each image's folder is its true label: the report then adds the figures
training gives its test split (`core.metrics`: accuracy with its 95% interval,
log-loss, ROC AUC, calibration, per-class precision and recall, the confusion
matrix) and a gallery of the misclassified and the least confident images.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
from array import array
from collections import Counter
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from core.images import ImageDecodeError, decode_rgb
from core.metrics import classification_metrics

HISTOGRAM_BINS = 20
FAILURES_SHOWN = 200
PERCENTILES = ("p50", "p95", "p99")
GALLERY_SIZE = 24  # of each kind: kept in bounded heaps, so memory stays flat
THUMBNAIL_PIXELS = 112


class ReportBuilder:
    def __init__(self, class_names: Collection[str] = ()) -> None:
        self.class_names = set(class_names)
        self.confidences = array("f")
        self.latencies_ms = array("f")
        self.labels: Counter[str] = Counter()
        self.labels_scored: list[str] | None = None
        # Heaps of (key, tiebreak, entry): the most confident mistakes, the least confident predictions.
        self.mistakes: list[tuple[float, str, dict[str, Any]]] = []
        self.least_confident: list[tuple[float, str, dict[str, Any]]] = []
        self.failures: list[dict[str, str]] = []
        # Each scored image's true class and every class's score (labels in sorted order).
        self.truths = array("H")
        self.scores = array("f")
        self.scored = self.correct = 0
        self.first_start: float | None = None
        self.last_finish: float | None = None
        self.parts = 0

    def add_part(self, part: dict[str, Any]) -> None:
        self.parts += 1
        for prediction in part["predictions"]:
            self.confidences.append(prediction["confidence"])
            self.labels[prediction["label"]] += 1
            folder = PurePosixPath(prediction["image"]).parent.name
            truth = folder if folder in self.class_names else None
            entry = {**prediction, "true_label": truth}
            _keep(self.least_confident, -prediction["confidence"], entry)
            if truth is not None:
                self.scored += 1
                self.correct += truth == prediction["label"]
                self._add_scores(truth, prediction["scores"])
                if truth != prediction["label"]:
                    _keep(self.mistakes, prediction["confidence"], entry)
        self.failures += part["failures"]
        self.latencies_ms.extend(part.get("latencies_ms", []))
        self.first_start = min(part["started"], self.first_start or part["started"])
        self.last_finish = max(part["finished"], self.last_finish or part["finished"])

    def report(self, *, input_uri: str, model_name: str, settings: dict[str, Any]) -> dict[str, Any]:
        succeeded, failed = len(self.confidences), len(self.failures)
        total = succeeded + failed
        seconds = (self.last_finish or 0.0) - (self.first_start or 0.0)
        report: dict[str, Any] = {
            "input": input_uri,
            "model": model_name,
            "settings": settings,
            "images": total,
            "succeeded": succeeded,
            "failed": failed,
            "success_rate": round(succeeded / total, 4) if total else 0.0,
            "label_distribution": dict(sorted(self.labels.items())),
            "confidence": _confidence_stats(np.frombuffer(self.confidences, dtype=np.float32)),
            "request_latency_ms": _latency_stats(np.frombuffer(self.latencies_ms, dtype=np.float32)),
            "seconds": round(seconds, 3),
            "images_per_second": round(total / seconds, 1) if seconds > 0 else 0.0,
            "parts": self.parts,
            "failures": self.failures,
        }
        if self.scored:
            report["accuracy_by_folder"] = round(self.correct / self.scored, 4)
            report["evaluation"] = self._evaluation()
        report["gallery"] = {
            "misclassified": _ranked(self.mistakes),
            "least_confident": _ranked(self.least_confident),
        }
        return report

    def _add_scores(self, truth: str, scores: dict[str, float]) -> None:
        if self.labels_scored is None:
            self.labels_scored = sorted(scores)
            if not self.class_names <= set(self.labels_scored):
                raise ValueError(
                    f"the model scores {self.labels_scored}, which lacks folder labels "
                    f"{sorted(self.class_names - set(self.labels_scored))}"
                )
        if sorted(scores) != self.labels_scored:
            raise ValueError(
                f"a prediction scores {sorted(scores)}, others {self.labels_scored}: two models?"
            )
        self.truths.append(self.labels_scored.index(truth))
        self.scores.extend(scores[label] for label in self.labels_scored)

    def _evaluation(self) -> dict[str, Any]:
        labels = self.labels_scored or []
        probabilities = np.frombuffer(self.scores, dtype=np.float32).reshape(-1, len(labels))
        return classification_metrics(np.frombuffer(self.truths, dtype=np.uint16), probabilities, labels)


def _keep(heap: list[tuple[float, str, dict[str, Any]]], key: float, entry: dict[str, Any]) -> None:
    """Keep the GALLERY_SIZE entries of largest `key` (ties broken by path, for stable pages)."""
    item = (key, entry["image"], entry)
    if len(heap) < GALLERY_SIZE:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _ranked(heap: list[tuple[float, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Largest key first: the most confident mistake, the least confident prediction."""
    return [entry for _, _, entry in sorted(heap, key=lambda item: (-item[0], item[1]))]


def thumbnail(data: bytes) -> str | None:
    """A small JPEG as a data URI for the gallery, or None when the bytes do not decode."""
    try:
        pixels = decode_rgb(data)
    except ImageDecodeError:
        return None
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _confidence_stats(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {}
    counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return {
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "p50": round(float(np.median(values)), 4),
        "max": round(float(values.max()), 4),
        "histogram": {"bins": HISTOGRAM_BINS, "range": [0.0, 1.0], "counts": counts.tolist()},
    }


def _latency_stats(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "requests": len(values),
        "mean": round(float(values.mean()), 2),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
    }


def _bar_chart(title: str, items: list[tuple[str, int]], chart_id: str, x_title: str) -> str:
    """Vertical bars as inline SVG, each with its count above it; axis titles on both axes."""
    width, height, pad, bottom = 640, 240, 40, 50
    peak = max((count for _, count in items), default=0) or 1
    slot = (width - 2 * pad) / max(len(items), 1)
    bars = []
    for position, (label, count) in enumerate(items):
        bar_height = (height - pad - bottom) * count / peak
        x, y = pad + position * slot + slot * 0.1, height - bottom - bar_height
        middle = x + slot * 0.4
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{bar_height:.1f}">'
            f"<title>{html.escape(f'{label}: {count}')}</title></rect>"
            f'<text class="count" x="{middle:.1f}" y="{y - 3:.1f}" text-anchor="middle">{count}</text>'
        )
        if len(items) <= 20:
            bars.append(
                f'<text x="{middle:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
                f"{html.escape(label)}</text>"
            )
    axis_y = height - bottom
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
        f'<line x1="{pad}" y1="{axis_y}" x2="{width - pad}" y2="{axis_y}" stroke="#444"/>'
        f'<line x1="{pad}" y1="{pad - 10}" x2="{pad}" y2="{axis_y}" stroke="#444"/>'
        f"{''.join(bars)}"
        f'<text class="axis" x="{width / 2:.0f}" y="{height - 12}" text-anchor="middle">'
        f"{html.escape(x_title)}</text>"
        f'<text class="axis" x="12" y="{axis_y / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {axis_y / 2:.0f})">images</text>'
        "</svg></figure>"
    )


def _evaluation_html(evaluation: dict[str, Any] | None) -> str:
    """The confusion matrix (true label down, predicted across, with counts) and per-class figures."""
    if not evaluation:
        return ""
    matrix = evaluation["confusion_matrix"]
    labels, rows = matrix["labels"], matrix["rows_true_columns_predicted"]
    peak = max((count for row in rows for count in row), default=0) or 1
    header = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(
            f'<td class="{"hit" if i == j else "miss"}" style="opacity:{0.35 + 0.65 * count / peak:.2f}">'
            f"{count}</td>"
            for j, count in enumerate(row)
        )
        + "</tr>"
        for i, (label, row) in enumerate(zip(labels, rows, strict=True))
    )
    per_class = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{f['precision']:.2%}</td><td>{f['recall']:.2%}</td>"
        f"<td>{f['support']}</td></tr>"
        for label, f in evaluation["per_class"].items()
    )
    low, high = evaluation["accuracy_95ci"]
    right = (
        f"{evaluation['accuracy']:.2%} of {evaluation['examples']} right (95% interval {low:.2%}-{high:.2%})"
    )
    per_class_header = "<tr><th>class</th><th>precision</th><th>recall</th><th>images</th></tr>"
    auc = evaluation["roc_auc"]
    figures = {
        "log-loss": f"{evaluation['log_loss']:.4f}",
        "ROC AUC": "n/a (one class)" if auc is None else f"{auc:.4f}",
        "expected calibration error": f"{evaluation['calibration']['ece']:.4f}",
    }
    figure_rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in figures.items())
    reliability = "".join(
        f"<tr><td>{row['from']:.1f}-{row['to']:.1f}</td><td>{row['images']}</td>"
        f"<td>{row['confidence']:.2%}</td><td>{row['accuracy']:.2%}</td></tr>"
        for row in evaluation["calibration"]["bins"]
    )
    return f"""<h2>Against the folder labels: {right}</h2>
<table id="figures">{figure_rows}</table>
<table id="confusion"><caption>Confusion matrix: true label (rows) by predicted label (columns)</caption>
<tr><th>true / predicted</th>{header}</tr>{body}</table>
<table id="per-class">{per_class_header}{per_class}</table>
<table id="reliability"><caption>Reliability: accuracy against the top label's confidence</caption>
<tr><th>confidence</th><th>images</th><th>mean confidence</th><th>accuracy</th></tr>{reliability}</table>"""


def _gallery_html(
    title: str, gallery_id: str, entries: list[dict[str, Any]], thumbnails: dict[str, str]
) -> str:
    if not entries:
        return ""
    figures = []
    for entry in entries:
        source = thumbnails.get(entry["image"])
        picture = f'<img src="{source}" alt="">' if source else '<div class="missing">no preview</div>'
        truth = entry.get("true_label")
        said = f"{html.escape(entry['label'])} ({entry['confidence']:.1%})"
        caption = f"true {html.escape(truth)}, predicted {said}" if truth else f"predicted {said}"
        figures.append(
            f"<figure>{picture}<figcaption>{caption}<br><small>{html.escape(entry['image'])}</small>"
            "</figcaption></figure>"
        )
    heading = f"<h2>{html.escape(title)} ({len(entries)})</h2>"
    return f'{heading}<div class="gallery" id="{gallery_id}">{"".join(figures)}</div>'


def _accuracy(report: dict[str, Any]) -> dict[str, str]:
    if "accuracy_by_folder" not in report:
        return {}
    return {"accuracy by folder": f"{report['accuracy_by_folder']:.2%}"}


def gallery_images(report: dict[str, Any]) -> set[str]:
    """Every image the report's galleries show, whose thumbnails the page embeds."""
    return {entry["image"] for entries in report.get("gallery", {}).values() for entry in entries}


def _left_out(report: dict[str, Any]) -> dict[str, str]:
    """The summary row naming the files the listing passed over, and why."""
    left_out = report.get("left_out")
    if not left_out or not left_out["files"]:
        return {}
    reasons = "; ".join(f"{reason}: {entry['files']}" for reason, entry in left_out["by_reason"].items())
    return {"files left out": f"{left_out['files']} ({reasons})"}


def render_html(report: dict[str, Any], thumbnails: dict[str, str] | None = None) -> str:
    """One page: summary, evaluation, label distribution, confidence histogram, galleries, failures.

    `thumbnails` maps a gallery image to its data URI (see `thumbnail`)."""
    confidence = report.get("confidence") or {}
    histogram = confidence.get("histogram", {"counts": [], "bins": HISTOGRAM_BINS})
    step = 1.0 / histogram["bins"]
    bins = [(f"{i * step:.2f}", count) for i, count in enumerate(histogram["counts"])]
    latency = report.get("request_latency_ms") or {}
    summary = {
        "input": report["input"],
        "model": report["model"],
        "images": report["images"],
        "succeeded": report["succeeded"],
        "failed": report["failed"],
        "success rate": f"{report['success_rate']:.2%}",
        "throughput": f"{report['images_per_second']} images/s over {report['seconds']} s",
        "request latency p50 / p95 / p99": " / ".join(f"{latency.get(k, '-')} ms" for k in PERCENTILES),
        "confidence mean / median": f"{confidence.get('mean', '-')} / {confidence.get('p50', '-')}",
        **_accuracy(report),
        **_left_out(report),
        **{f"setting: {key}": value for key, value in report.get("settings", {}).items()},
    }
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in summary.items()
    )
    failures = report.get("failures", [])
    failure_rows = "".join(
        f"<tr><td>{html.escape(f['image'])}</td><td>{html.escape(f['reason'])}</td></tr>"
        for f in failures[:FAILURES_SHOWN]
    )
    hidden = len(failures) - FAILURES_SHOWN
    more = f"<p>{hidden} more in report.json.</p>" if hidden > 0 else ""
    gallery = report.get("gallery", {})
    galleries = _gallery_html(
        "Misclassified, most confident first",
        "misclassified",
        gallery.get("misclassified", []),
        thumbnails or {},
    ) + _gallery_html(
        "Least confident", "least-confident", gallery.get("least_confident", []), thumbnails or {}
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dogs_cats batch report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }}
#confusion td {{ text-align: right; font-weight: 600; color: #fff; }}
#confusion td.hit {{ background: #2e8540; }}
#confusion td.miss {{ background: #c0392b; }}
.bar {{ fill: #3b7dd8; }}
svg text {{ font-size: 11px; fill: #333; }}
svg text.axis {{ font-size: 12px; font-weight: 600; }}
figcaption {{ font-weight: 600; margin: 1em 0 0.3em; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
.gallery figure {{ width: {THUMBNAIL_PIXELS + 40}px; margin: 0; }}
.gallery figcaption {{ font-weight: normal; font-size: 12px; margin: 0.2em 0; overflow-wrap: anywhere; }}
</style></head><body>
<h1>Batch inference report</h1>
<table id="summary">{rows}</table>
{_evaluation_html(report.get("evaluation"))}
{_bar_chart("Label distribution", list(report["label_distribution"].items()), "labels", "predicted label")}
{_bar_chart("Confidence of the top label", bins, "confidence", "confidence (bin start)")}
{galleries}
<h2>Failures ({len(failures)})</h2>
<table id="failures"><tr><th>image</th><th>reason</th></tr>{failure_rows}</table>{more}
</body></html>
"""
