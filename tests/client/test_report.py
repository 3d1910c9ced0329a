"""The batch report: figures from parts, and the HTML page as Chromium renders it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.report import ReportBuilder, render_html

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _part(predictions: list[tuple[str, str, float]], **extra: object) -> dict:
    return {
        "predictions": [{"image": i, "label": label, "confidence": c} for i, label, c in predictions],
        "failures": [],
        "latencies_ms": [],
        "started": 100.0,
        "finished": 102.0,
        **extra,
    }


def _report() -> dict:
    builder = ReportBuilder(class_names=["cat", "dog"])
    builder.add_part(
        _part(
            [
                ("b/val/cat/1.jpg", "cat", 0.9),
                ("b/val/dog/2.jpg", "cat", 0.6),
                ("b/val/dog/3.jpg", "dog", 0.7),
            ],
            failures=[{"image": "b/val/dog/4.jpg", "reason": "empty file"}],
            latencies_ms=[float(v) for v in range(1, 101)],
        )
    )
    builder.add_part(_part([], started=101.0, finished=104.0))
    return builder.report(input_uri="b/val", model_name="m", settings={"protocol": "grpc"})


def test_report_counts_rates_latency_and_scores_class_folders() -> None:
    report = _report()
    assert (report["images"], report["succeeded"], report["failed"]) == (4, 3, 1)
    assert report["success_rate"] == 0.75
    assert report["failures"] == [{"image": "b/val/dog/4.jpg", "reason": "empty file"}]
    assert report["label_distribution"] == {"cat": 2, "dog": 1}
    confidence = report["confidence"]
    assert (confidence["mean"], confidence["min"], confidence["p50"], confidence["max"]) == (
        pytest.approx(0.7333, abs=1e-4),
        pytest.approx(0.6),
        pytest.approx(0.7),
        pytest.approx(0.9),
    )
    assert sum(confidence["histogram"]["counts"]) == 3
    assert report["request_latency_ms"]["p50"] == pytest.approx(50.5)
    assert report["request_latency_ms"]["p95"] == pytest.approx(95.05)
    assert report["request_latency_ms"]["p99"] == pytest.approx(99.01)
    assert report["accuracy_by_folder"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["seconds"] == 4.0, "wall span from the first part's start to the last one's end"
    assert report["images_per_second"] == 1.0
    assert report["settings"] == {"protocol": "grpc"}


def test_html_escapes_what_it_shows() -> None:
    report = _report()
    report["label_distribution"] = {"<script>alert(1)</script>": 3}
    page = render_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


@pytest.mark.integration
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()))
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]

    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count('class="bar"') == 2 + 20, "two label bars and one bar per confidence bin"
    assert "Batch inference report" in dom
    assert "empty file" in dom

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, f"--screenshot={screenshot}", "--window-size=900,1200",
         page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    bar_blue = np.all(np.abs(pixels - [0x3B, 0x7D, 0xD8]) < 8, axis=-1)
    assert bar_blue.sum() > 2000, "the charts' bars are drawn"
