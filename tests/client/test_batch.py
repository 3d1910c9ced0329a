from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

from client.batch import BatchOutcome, RetryPolicy, TritonUnavailable, build_report, run_batch
from pipeline.images import decode_rgb
from tests.conftest import REPO_ROOT, write_images


def test_report_counts_failures_and_scores_class_folders() -> None:
    outcome = BatchOutcome(
        predictions=[
            {"image": "b/val/cat/1.jpg", "label": "cat", "confidence": 0.9},
            {"image": "b/val/dog/2.jpg", "label": "cat", "confidence": 0.6},
            {"image": "b/val/dog/3.jpg", "label": "dog", "confidence": 0.7},
        ],
        failures=[{"image": "b/val/dog/4.jpg", "reason": "empty file"}],
    )
    report = build_report(outcome, input_uri="b/val", model_name="m", seconds=2.0, class_names=["cat", "dog"])
    assert report["images"] == 4
    assert report["succeeded"] == 3
    assert report["failed"] == 1
    assert report["failures"] == [{"image": "b/val/dog/4.jpg", "reason": "empty file"}]
    assert report["label_distribution"] == {"cat": 2, "dog": 1}
    assert report["confidence"] == {"mean": 0.7333, "min": 0.6, "p50": 0.7, "max": 0.9}
    assert report["accuracy_by_folder"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["images_per_second"] == 2.0
    assert "accuracy_by_folder" not in build_report(outcome, input_uri="x", model_name="m", seconds=1.0)


def test_retry_backs_off_then_succeeds() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return "answer"

    assert RetryPolicy(attempts=5, first_delay_s=0.001).call(flaky, "x") == "answer"
    assert len(calls) == 3


def test_retry_gives_up_with_a_clear_error() -> None:
    def down() -> None:
        raise InferenceServerException("Service Unavailable", status="503")

    with pytest.raises(
        TritonUnavailable, match=r"inference failed 3 times; last error: .*Service Unavailable"
    ):
        RetryPolicy(attempts=3, first_delay_s=0.001).call(down, "inference")


def test_client_errors_are_not_retried() -> None:
    calls: list[int] = []

    def bad_request() -> None:
        calls.append(1)
        raise InferenceServerException("unexpected shape", status="400")

    with pytest.raises(InferenceServerException, match="unexpected shape"):
        RetryPolicy(attempts=5, first_delay_s=0.001).call(bad_request, "inference")
    assert len(calls) == 1


def _expected(model_uri: str, files: list[Path], image_size: int = 32) -> np.ndarray:
    session = ort.InferenceSession(f"{model_uri}/model.onnx", providers=["CPUExecutionProvider"])
    images = np.stack([decode_rgb(f.read_bytes(), image_size) for f in files])
    (probabilities,) = session.run(["probabilities"], {"image": images})
    return np.asarray(probabilities)


@pytest.mark.integration
def test_batch_matches_in_process_onnx_and_records_bad_files(served_model: dict, tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=11, size=40, seed=7)  # 22 images: 3 batches of <= 8
    (images / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "dog" / "empty.png").write_bytes(b"")
    (images / "dog" / "notes.txt").write_text("ignored: not an image suffix")

    report = run_batch(
        served_model["url"], str(images), str(tmp_path / "out"), concurrency=3, class_names=["cat", "dog"]
    )

    assert report["images"] == 24
    assert report["succeeded"] == 22
    assert {(Path(f["image"]).name, f["reason"]) for f in report["failures"]} == {
        ("broken.jpg", "not an image Pillow can read"),
        ("empty.png", "empty file"),
    }
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 22
    assert len({line["image"] for line in lines}) == 22
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report

    # What Triton answered is what the trained model computes in-process.
    files = [Path(line["image"]) for line in lines]
    expected = _expected(served_model["model_uri"], files)
    labels = ["cat", "dog"]
    for line, row in zip(lines, expected, strict=True):
        assert line["label"] == labels[int(row.argmax())]
        assert line["confidence"] == pytest.approx(float(row.max()), abs=1e-5)


@pytest.mark.integration
def test_predict_cli_prints_top_k(served_model: dict, tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=1)
    (tmp_path / "bad.jpg").write_text("nope")
    result = subprocess.run(
        [sys.executable, "-m", "client", "--url", served_model["url"], "predict", "--top-k", "2", "--json",
         str(images / "cat" / "cat0.jpg"), str(tmp_path / "bad.jpg")],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1, "a failed image makes the exit code non-zero"
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert [p["label"] for p in good["predictions"]] in (["cat", "dog"], ["dog", "cat"])
    assert sum(p["confidence"] for p in good["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert bad["error"] == "not an image Pillow can read"


def test_cli_says_clearly_when_no_server_answers(tmp_path: Path) -> None:
    from tests.conftest import free_port

    image = write_images(tmp_path / "in", per_class=1) / "cat" / "cat0.jpg"
    result = subprocess.run(
        [sys.executable, "-m", "client", "--url", f"127.0.0.1:{free_port()}", "predict", str(image)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot reach Triton" in result.stderr


@pytest.mark.integration
def test_a_run_cut_short_resumes_with_every_image_exactly_once(
    served_model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.batch as batch

    images = write_images(tmp_path / "in", per_class=20, size=40)  # 40 images: 5 parts of one request of 8
    output = tmp_path / "out"
    real_classify = batch.classify
    calls = {"n": 0}

    def server_dies_after_three(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > 3:
            raise ConnectionRefusedError("connection refused")
        return real_classify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "classify", server_dies_after_three)
    quick = RetryPolicy(attempts=2, first_delay_s=0.001)
    with pytest.raises(TritonUnavailable, match=r"3 of 5 parts are saved under .*: rerun to resume"):
        run_batch(served_model["url"], str(images), str(output), concurrency=1, retry=quick, part_size=8)
    assert not (output / "predictions.jsonl").exists()
    assert len(list((output / "parts").iterdir())) == 3

    monkeypatch.setattr(batch, "classify", real_classify)
    report = run_batch(served_model["url"], str(images), str(output), part_size=8)
    assert report["parts"] == {"total": 5, "resumed": 3}
    lines = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    names = sorted(Path(line["image"]).name for line in lines)
    assert names == sorted(p.name for p in images.rglob("*.jpg")), "none missing, none twice"


@pytest.mark.integration
def test_a_server_that_stays_down_ends_the_run_clearly(tmp_path: Path) -> None:
    from tests.conftest import free_port

    images = write_images(tmp_path / "in", per_class=1)
    with pytest.raises(TritonUnavailable, match="failed 2 times"):
        run_batch(
            f"127.0.0.1:{free_port()}",
            str(images),
            str(tmp_path / "out"),
            retry=RetryPolicy(attempts=2, first_delay_s=0.001),
        )


def test_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images found"):
        run_batch("127.0.0.1:1", str(tmp_path), str(tmp_path / "out"))
