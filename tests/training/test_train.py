from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import PretrainedChoice
from harness.data import REPO_ROOT, write_images
from training.job import TrainingJob
from training.staging import StagingOptions, split_files, stage_dataset
from training.train import TrainingDataError, class_weights, train

pytestmark = pytest.mark.integration


def _staged(tmp_path: Path, per_class: int = 12, **options: float) -> str:
    dataset = str(tmp_path / "bucket" / "datasets" / "d")
    source = write_images(tmp_path / "source", per_class=per_class, size=40)
    # A quarter each for val and test: a few dozen images leave every class in both.
    splits = {"val_fraction": 0.25, "test_fraction": 0.25, **options}
    stage_dataset(str(source), dataset, StagingOptions(**splits), cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    return dataset


def test_training_writes_a_servable_model_folder(trained_model: str) -> None:
    import tensorflow as tf

    folder = Path(trained_model)
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoints", "confusion_matrix.png", "labels.txt", "metrics.json", "model.int8.onnx", "model.onnx",
        "model_card.json", "reliability.png", "saved_model", "training_curves.png",
    ]  # fmt: skip
    assert (folder / "labels.txt").read_text() == "cat\ndog\n"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["labels"] == ["cat", "dog"]
    assert metrics["history"]["epoch"] == [1, 2]
    for split in ("validation", "test"):
        assert set(metrics[split]) >= {
            "accuracy", "accuracy_95ci", "log_loss", "roc_auc", "calibration", "per_class", "confusion_matrix"
        }  # fmt: skip
    assert metrics["test_accuracy"] == metrics["test"]["accuracy"]
    assert set(metrics["int8"]) >= {"test", "agreement", "serve", "why"}
    assert metrics["onnx_max_abs_difference"] <= 1e-4
    card = json.loads((folder / "model_card.json").read_text())
    assert card["metrics"]["test"]["accuracy_95ci"] == metrics["test"]["accuracy_95ci"]
    assert card["int8"]["why"] == metrics["int8"]["why"]
    assert card["dataset"]["digest"] == metrics["dataset_digest"]
    assert card["versions"]["tensorflow"] == tf.__version__
    assert card["params"]["epochs"] == 2
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert card["git_commit"] == head.stdout.strip()

    signature = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8
    assert spec.shape.as_list() == [None, 32, 32, 3]
    probabilities = signature(image=tf.zeros([3, 32, 32, 3], tf.uint8))["probabilities"].numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_onnx_matches_the_saved_model_on_generated_images(trained_model: str, session_images: Path) -> None:
    from core.images import decode_rgb
    from training.export import parity

    images = np.stack([decode_rgb(p.read_bytes(), 32) for p in sorted(session_images.rglob("*.jpg"))])
    difference = parity(Path(trained_model) / "saved_model", Path(trained_model) / "model.onnx", images)
    assert difference <= 1e-4


@pytest.mark.faults
def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    dataset = _staged(tmp_path, per_class=40)
    output = tmp_path / "bucket" / "models" / "m"
    command = [
        sys.executable, "-m", "training", "train", "--dataset-uri", dataset, "--output-uri", str(output),
        "--model", "small", "--image-size", "64", "--epochs", "6", "--batch-size", "4",
        "--early-stopping-patience", "99",
    ]  # fmt: skip
    state = output / "checkpoints" / "state.json"
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done_before_kill = json.loads(state.read_text())["completed_epochs"]
    assert 1 <= done_before_kill < 6, "killed after at least one and before the last epoch"

    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming after epoch {done_before_kill}" in rerun.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["history"]["epoch"] == [1, 2, 3, 4, 5, 6], "no epoch twice, none lost"
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    best = f"best-epoch-{metrics['best_epoch']:03d}.weights.npz"
    assert checkpoints == sorted([best, "epoch-006.keras", "state.json"]), "superseded files are removed"


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    dataset = _staged(tmp_path, per_class=24)  # enough training steps an epoch to converge, then wobble
    output = tmp_path / "bucket" / "models" / "m"
    metrics = train(
        TrainingJob(
            model="small",
            dataset_uri=dataset,
            output_uri=str(output),
            image_size=32,
            epochs=30,
            batch_size=8,
            early_stopping_patience=1,
        )
    )
    history = metrics["history"]
    assert metrics["stopped_early"] is True
    assert metrics["epochs_trained"] < 30
    assert metrics["best_epoch"] == 1 + int(np.argmin(history["val_loss"]))


def test_three_classes_train_a_softmax_model(tmp_path: Path) -> None:
    import onnxruntime as ort

    source = write_images(tmp_path / "source", per_class=12, size=40)
    birds = source / "bird"
    birds.mkdir()
    rng = np.random.default_rng(5)
    for index in range(12):
        pixels = rng.integers(0, 90, (40, 40, 3), dtype=np.uint8)
        pixels[..., 1] += 150  # birds are green
        Image.fromarray(pixels).save(birds / f"bird{index}.jpg")
    dataset = str(tmp_path / "ds")
    stage_dataset(
        str(source),
        dataset,
        StagingOptions(val_fraction=0.3, test_fraction=0.3),
        cache_dir=tmp_path / "cache",
    )
    output = tmp_path / "m"
    metrics = train(
        TrainingJob(
            model="small", dataset_uri=dataset, output_uri=str(output), image_size=32, epochs=1, batch_size=8
        )
    )
    assert metrics["labels"] == ["bird", "cat", "dog"]
    assert len(metrics["test"]["confusion_matrix"]["rows_true_columns_predicted"]) == 3
    session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": np.zeros((2, 32, 32, 3), np.uint8)})
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_an_onnx_export_that_drifts_is_not_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train as module

    dataset = _staged(tmp_path)
    monkeypatch.setattr(module, "parity", lambda *args: 3e-4)
    with pytest.raises(
        module.ParityError, match=r"differs from the SavedModel by 3.00e-04 \(tolerance 1e-04\)"
    ):
        train(
            TrainingJob(
                model="small", dataset_uri=dataset, output_uri=str(tmp_path / "m"), image_size=32, epochs=1
            )
        )
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["checkpoints"], "no model published"


def _one_epoch(dataset: Path, tmp_path: Path, batch_size: int = 32) -> TrainingJob:
    """A one-epoch job of the small model into tmp_path/m, for the tests of refused inputs."""
    return TrainingJob(
        model="small",
        dataset_uri=str(dataset),
        output_uri=str(tmp_path / "m"),
        image_size=32,
        epochs=1,
        batch_size=batch_size,
    )


def test_a_split_missing_a_class_is_a_clear_error(tmp_path: Path) -> None:
    dataset = Path(_staged(tmp_path))
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if not (f["split"] == "val" and f["label"] == "dog")]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingDataError, match="the val split has no images of class dog"):
        train(_one_epoch(dataset, tmp_path))
    assert not (tmp_path / "m").exists()


def test_an_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    dataset = Path(_staged(tmp_path))
    staged = json.loads((dataset / "manifest.json").read_text())
    for split, remedy in (("val", "raise val_fraction"), ("test", "raise test_fraction")):
        manifest = {**staged, "files": [f for f in staged["files"] if f["split"] != split]}
        (dataset / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(
            TrainingDataError, match=f"the {split} split is empty: stage more images or {remedy}"
        ):
            train(_one_epoch(dataset, tmp_path))


def test_a_damaged_staged_file_is_a_clear_error(tmp_path: Path) -> None:
    dataset = Path(_staged(tmp_path))
    manifest = json.loads((dataset / "manifest.json").read_text())
    (dataset / manifest["files"][0]["path"]).write_text("this is not an image")
    with pytest.raises(TrainingDataError, match=r"could not be decoded.*restage the dataset"):
        train(_one_epoch(dataset, tmp_path, batch_size=64))


def test_class_weights_balance_the_loss() -> None:
    files = [{"label": "cat"}] * 30 + [{"label": "dog"}] * 10
    assert class_weights(files, ["cat", "dog"]) == {0: 0.6667, 1: 2.0}


def test_training_cli_fails_clearly_without_a_staged_dataset(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--dataset-uri", str(tmp_path / "none"),
         "--output-uri", str(tmp_path / "model"), "--image-size", "32"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "manifest.json" in result.stderr
    assert not (tmp_path / "model").exists()


def test_the_pretrained_default_trains_its_head_and_exports_what_it_evaluated(tmp_path: Path) -> None:
    """EfficientNet-Lite0 through the same loop: the resize to 224 and the input scaling live
    inside the exported model, which takes the run's image_size in uint8 like every model."""
    dataset = _staged(tmp_path, per_class=16)
    output = tmp_path / "m"
    metrics = train(
        TrainingJob(dataset_uri=dataset, output_uri=str(output), image_size=40, epochs=2, batch_size=8)
    )
    assert metrics["model"] == "efficientnet_lite0"
    assert metrics["onnx_max_abs_difference"] <= 1e-4
    # The INT8 twin, judged on the same test images as FP32: here it may be served.
    assert (output / "model.int8.onnx").stat().st_size < (output / "model.onnx").stat().st_size / 2
    assert metrics["int8"]["serve"], metrics["int8"]["why"]
    assert metrics["int8"]["agreement"] >= 0.99
    # 7-bit weights: no pair of uint8 x int8 products overflows int16 on a CPU without VNNI.
    import onnx
    from onnx import numpy_helper

    twin = onnx.load(str(output / "model.int8.onnx")).graph.initializer
    weights = [numpy_helper.to_array(t) for t in twin if t.data_type == onnx.TensorProto.INT8]
    assert weights
    assert max(int(np.abs(w).max()) for w in weights) <= 64
    assert metrics["val_accuracy"] >= 0.9, metrics["history"]  # red cats, blue dogs
    import onnxruntime as ort

    from core.images import decode_rgb

    session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape[1:]) == ("image", "tensor(uint8)", [40, 40, 3])
    # The test figures are the exported model's on the client's decode of each test file.
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    test = split_files(manifest, "test")
    pixels = np.stack([decode_rgb((Path(dataset) / f["path"]).read_bytes(), 40) for f in test])
    (probabilities,) = session.run(["probabilities"], {"image": pixels})
    predicted = [manifest["classes"][int(np.argmax(row))] for row in probabilities]
    right = sum(label == f["label"] for label, f in zip(predicted, test, strict=True))
    assert metrics["test"]["examples"] == len(test)
    assert metrics["test"]["accuracy"] == round(right / len(test), 4)


@pytest.mark.parametrize(
    ("model", "top", "first_tuned"), [("efficientnet_lite0", 15, 8), ("efficientnet_lite1", 20, 13)]
)  # the top 8 of 16 blocks, and of 21
def test_fine_tuning_trains_only_the_top_blocks_after_the_head(
    tmp_path: Path, model: PretrainedChoice, top: int, first_tuned: int
) -> None:
    """A second phase at a low rate: the top blocks move, the stem and every BatchNorm keep ImageNet's."""
    import keras

    from training.efficientnet import pretrained_backbone

    dataset = _staged(tmp_path, per_class=16, val_fraction=0.25)
    output = tmp_path / "m"
    job = TrainingJob(
        dataset_uri=dataset, output_uri=str(output), model=model, image_size=40, epochs=1, batch_size=8,
        fine_tune_epochs=1, fine_tune_learning_rate=1e-3,
    )  # fmt: skip
    metrics = train(job)
    assert (metrics["fine_tune_from"], metrics["epochs_trained"]) == (1, 2)
    assert metrics["model"] == model
    checkpointed = keras.models.load_model(output / "checkpoints" / "epoch-002.keras")
    trained = checkpointed.get_layer(f"{model}_top")
    bottom, imagenet = pretrained_backbone(model, 40, top_blocks=8)

    def moved(name: str) -> bool:
        before, after = imagenet.get_layer(name).get_weights(), trained.get_layer(name).get_weights()
        return any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))

    for name in (f"blocks_{top}_project_conv", f"blocks_{first_tuned}_expand_conv", "conv_head"):
        assert moved(name), name
    for name in ("bn1", f"blocks_{top}_bn2"):
        assert not moved(name), name
    # The stem and the blocks below never train: they are in the frozen bottom, not the checkpoint.
    assert {"conv_stem", f"blocks_{first_tuned - 1}_project_conv"} <= {layer.name for layer in bottom.layers}
    assert trained.layers[1].name == f"blocks_{first_tuned}_expand_conv"


def test_the_default_recipe_sizes_the_head_s_epochs_then_fine_tunes_two(tmp_path: Path) -> None:
    """epochs 0 on a few photos: the head gets the most sized epochs (ten), then two fine-tuning epochs."""
    dataset = _staged(tmp_path, per_class=16, val_fraction=0.25)
    job = TrainingJob(
        dataset_uri=dataset, output_uri=str(tmp_path / "m"), image_size=40, backbone_size=32, batch_size=8,
        early_stopping_patience=99,
    )  # fmt: skip
    assert (job.epochs, job.fine_tune_epochs) == (0, 2)
    metrics = train(job)
    assert (metrics["fine_tune_from"], metrics["epochs_trained"]) == (10, 12)


def test_a_resumed_fine_tuning_keeps_its_optimizer_state(tmp_path: Path) -> None:
    """A rerun asking for one more fine-tuning epoch continues Adam where it stopped (its step
    count and moments come from the checkpoint) instead of starting a fresh optimizer, and its
    learning-rate schedule spans the epochs this run asks for: the first run's cosine ended at zero."""
    import warnings

    import keras

    dataset = _staged(tmp_path, per_class=16, val_fraction=0.25)
    output = tmp_path / "m"
    job = dict(
        dataset_uri=dataset, output_uri=str(output), image_size=40, epochs=1, batch_size=8,
        fine_tune_learning_rate=1e-3, early_stopping_patience=99,
    )  # fmt: skip
    train(TrainingJob(**job, fine_tune_epochs=1))  # type: ignore[arg-type]
    once = keras.models.load_model(output / "checkpoints" / "epoch-002.keras")
    tuned_once = once.optimizer
    steps = int(tuned_once.iterations.numpy())
    assert tuned_once.get_config()["learning_rate"]["config"]["decay_steps"] == steps
    assert float(tuned_once.learning_rate) == pytest.approx(0.0, abs=1e-9), "the cosine ran out"
    moments = {v.path: v.numpy() for v in tuned_once.variables if "momentum" in v.path}
    assert steps > 0
    assert moments
    assert all(np.any(m) for m in moments.values())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(TrainingJob(**job, fine_tune_epochs=2))  # type: ignore[arg-type]
    assert (metrics["fine_tune_from"], metrics["epochs_trained"]) == (1, 3)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    twice = keras.models.load_model(output / "checkpoints" / "epoch-003.keras")
    tuned_twice = twice.optimizer
    assert int(tuned_twice.iterations.numpy()) == 2 * steps, "the step count went on, not from zero"
    assert tuned_twice.get_config()["learning_rate"]["config"]["decay_steps"] == 2 * steps
    top = "blocks_15_project_conv"
    before, after = (
        m.get_layer("efficientnet_lite0_top").get_layer(top).get_weights()[0] for m in (once, twice)
    )
    assert not np.array_equal(before, after), "the resumed epoch trained at a rate above zero"
    resumed = {v.path for v in tuned_twice.variables if "momentum" in v.path}
    assert resumed == moments.keys(), "the same variables train on"


def test_fine_tuning_is_refused_for_a_model_without_a_pretrained_backbone() -> None:
    with pytest.raises(ValueError, match="fine_tune_epochs needs a pretrained efficientnet_lite model"):
        TrainingJob(dataset_uri="/d", output_uri="/m", model="small", fine_tune_epochs=2)
