"""The batch report: figures from parts, and the HTML page as Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.report import GALLERY_SIZE, ReportBuilder, gallery_images, render_html, thumbnail
from harness.data import write_images

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _prediction(image: str, label: str, confidence: float) -> dict:
    """As the batch client writes it: the top label, and every class's score (cat or dog here)."""
    other = "dog" if label == "cat" else "cat"
    scores = dict(sorted({label: confidence, other: round(1 - confidence, 6)}.items()))
    return {"image": image, "label": label, "confidence": confidence, "scores": scores}


def _part(predictions: list[tuple[str, str, float]], **extra: object) -> dict:
    return {
        "predictions": [_prediction(*prediction) for prediction in predictions],
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


def test_labelled_folders_add_the_confusion_matrix_per_class_figures_and_a_gallery() -> None:
    report = _report()
    evaluation = report["evaluation"]
    assert evaluation["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert evaluation["confusion_matrix"] == {
        "labels": ["cat", "dog"],
        "rows_true_columns_predicted": [[1, 0], [1, 1]],
    }
    assert evaluation["per_class"] == {
        "cat": {"precision": 0.5, "recall": 1.0, "support": 1},
        "dog": {"precision": 1.0, "recall": 0.5, "support": 2},
    }
    # The true class's probabilities are 0.9, 0.4 and 0.7; dogs score 0.4 and 0.7 against the cat's 0.1.
    assert evaluation["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4) + np.log(0.7)) / 3, abs=1e-4)
    assert evaluation["roc_auc"] == 1.0
    assert evaluation["calibration"]["ece"] == pytest.approx((0.1 + 0.6 + 0.3) / 3, abs=1e-4)
    assert evaluation["accuracy_95ci"][0] < 2 / 3 < evaluation["accuracy_95ci"][1]
    (mistake,) = report["gallery"]["misclassified"]
    assert (mistake["image"], mistake["true_label"], mistake["label"]) == ("b/val/dog/2.jpg", "dog", "cat")
    assert [e["confidence"] for e in report["gallery"]["least_confident"]] == [0.6, 0.7, 0.9]


def test_the_gallery_keeps_the_most_confident_mistakes_and_the_least_confident_only() -> None:
    builder = ReportBuilder(class_names=["cat", "dog"])
    count = GALLERY_SIZE * 3
    builder.add_part(_part([(f"v/dog/{i}.jpg", "cat", i / count) for i in range(count)]))
    report = builder.report(input_uri="v", model_name="m", settings={})
    mistakes = [e["confidence"] for e in report["gallery"]["misclassified"]]
    least = [e["confidence"] for e in report["gallery"]["least_confident"]]
    assert mistakes == sorted((i / count for i in range(count)), reverse=True)[:GALLERY_SIZE]
    assert least == [i / count for i in range(GALLERY_SIZE)]


def test_unlabelled_input_has_no_evaluation_but_still_a_least_confident_gallery() -> None:
    builder = ReportBuilder(class_names=["cat", "dog"])
    builder.add_part(_part([("inbox/a.jpg", "cat", 0.8), ("inbox/b.jpg", "dog", 0.55)]))
    report = builder.report(input_uri="inbox", model_name="m", settings={})
    assert "evaluation" not in report
    assert report["gallery"]["misclassified"] == []
    assert [e["image"] for e in report["gallery"]["least_confident"]] == ["inbox/b.jpg", "inbox/a.jpg"]


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
    images = write_images(tmp_path / "val", per_class=2, size=96)  # red cats, blue dogs
    builder = ReportBuilder(class_names=["cat", "dog"])
    builder.add_part(
        _part(
            [
                (str(images / "cat" / "cat0.jpg"), "cat", 0.97),
                (str(images / "cat" / "cat1.jpg"), "dog", 0.81),
                (str(images / "dog" / "dog0.jpg"), "dog", 0.55),
                (str(images / "dog" / "dog1.jpg"), "dog", 0.93),
            ],
            failures=[{"image": str(images / "dog" / "broken.jpg"), "reason": "empty file"}],
            latencies_ms=[5.0, 7.0],
        )
    )
    report = builder.report(input_uri=str(images), model_name="m", settings={})
    thumbnails = {
        uri: preview for uri in gallery_images(report) if (preview := thumbnail(Path(uri).read_bytes()))
    }
    assert len(thumbnails) == 4
    page = tmp_path / "report.html"
    page.write_text(render_html(report, thumbnails))
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]

    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count('class="bar"') == 2 + 20, "two label bars and one bar per confidence bin"
    assert dom.count('class="count"') == 2 + 20, "every bar carries its count"
    assert dom.count('class="axis"') == 4, "both charts title both axes"
    assert "Batch inference report" in dom
    assert "empty file" in dom
    assert "75.00% of 4 right" in dom
    cells = re.findall(
        r'<tr><th>(cat|dog)</th><td class="(hit|miss)"[^>]*>(\d+)</td><td class="(hit|miss)"[^>]*>(\d+)</td>',
        dom,
    )
    assert cells == [("cat", "hit", "1", "miss", "1"), ("dog", "miss", "0", "hit", "2")], (
        "the confusion matrix"
    )
    assert dom.count('<img src="data:image/jpeg;base64,') == 1 + 4, "one mistake, four least confident"
    assert "true cat, predicted dog (81.0%)" in dom

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, f"--screenshot={screenshot}", "--window-size=900,2400",
         page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    bar_blue = np.all(np.abs(pixels - [0x3B, 0x7D, 0xD8]) < 8, axis=-1)
    assert bar_blue.sum() > 2000, "the charts' bars are drawn"
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((red > 150) & (green < 100) & (blue < 100)).sum() > 2000, "the red cat thumbnails are drawn"
    assert ((blue > 150) & (red < 100) & (green < 100)).sum() > 2000, "the blue dog thumbnails are drawn"
