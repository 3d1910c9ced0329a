"""The batch report: built part by part (memory grows by a few bytes per image,
not per prediction), then written as JSON and as one self-contained HTML page
(inline SVG charts, no scripts, no external files) people can open anywhere."""

from __future__ import annotations

import html
from array import array
from collections import Counter
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Any

import numpy as np

HISTOGRAM_BINS = 20
FAILURES_SHOWN = 200
PERCENTILES = ("p50", "p95", "p99")


class ReportBuilder:
    def __init__(self, class_names: Collection[str] = ()) -> None:
        self.class_names = set(class_names)
        self.confidences = array("f")
        self.latencies_ms = array("f")
        self.labels: Counter[str] = Counter()
        self.failures: list[dict[str, str]] = []
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
            if folder in self.class_names:
                self.scored += 1
                self.correct += folder == prediction["label"]
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
        return report


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


def _bar_chart(title: str, items: list[tuple[str, int]], chart_id: str) -> str:
    """Vertical bars as inline SVG; each bar carries its label and count as a tooltip."""
    width, height, pad = 640, 220, 30
    peak = max((count for _, count in items), default=0) or 1
    slot = (width - 2 * pad) / max(len(items), 1)
    bars = []
    for position, (label, count) in enumerate(items):
        bar_height = (height - 2 * pad) * count / peak
        x, y = pad + position * slot + slot * 0.1, height - pad - bar_height
        text = html.escape(f"{label}: {count}")
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{bar_height:.1f}">'
            f"<title>{text}</title></rect>"
        )
        if len(items) <= 20:
            bars.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - pad + 14}" text-anchor="middle">'
                f"{html.escape(label)}</text>"
            )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>'
        f"{''.join(bars)}</svg></figure>"
    )


def _accuracy(report: dict[str, Any]) -> dict[str, str]:
    if "accuracy_by_folder" not in report:
        return {}
    return {"accuracy by folder": f"{report['accuracy_by_folder']:.2%}"}


def render_html(report: dict[str, Any]) -> str:
    """One page: summary, label distribution, confidence histogram, latency, failures."""
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
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dogs_cats batch report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }}
.bar {{ fill: #3b7dd8; }}
svg text {{ font-size: 11px; fill: #333; }}
figcaption {{ font-weight: 600; margin: 1em 0 0.3em; }}
</style></head><body>
<h1>Batch inference report</h1>
<table id="summary">{rows}</table>
{_bar_chart("Label distribution", list(report["label_distribution"].items()), "labels")}
{_bar_chart("Confidence of the top label", bins, "confidence")}
<h2>Failures ({len(failures)})</h2>
<table id="failures"><tr><th>image</th><th>reason</th></tr>{failure_rows}</table>{more}
</body></html>
"""
