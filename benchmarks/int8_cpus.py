"""Does the INT8 twin answer alike on a CPU with VNNI and on one without?

    .venv/bin/python -m benchmarks.int8_cpus .bench/bucket/models/RUN [--images 400]

Needs qemu-user (`apt-get install qemu-user`). The twin's verdict is judged on the training
host; a CPU server without VNNI (AVX2, early AVX-512) computes its integer products another way.
This quantizes the folder's `model.onnx` twice on training's calibration sample, with 8-bit
weights and with the 7-bit weights training now uses, then scores a fixed random sample of the
validation split (never test) with each file and with FP32, each in its own process: natively
and under `qemu-x86_64 -cpu Haswell` (AVX2 without VNNI or AVX-512). Prints, per twin and CPU,
its agreement with FP32's labels, and how far the two CPUs' probabilities lie apart.
Emulated, a run of 400 images takes about 3 minutes per twin.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EMULATED_CPU = ["qemu-x86_64", "-cpu", "Haswell"]
TWINS = {"8-bit weights": False, "7-bit weights (training's)": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path, help="a model folder training wrote")
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args(argv)
    if shutil.which(EMULATED_CPU[0]) is None:
        parser.error("needs qemu-user: apt-get install qemu-user")
    from training.job import TrainingJob
    from training.quantize import calibration_sample, quantize_int8
    from training.staging import read_manifest, split_files
    from training.train import make_dataset

    card = json.loads((args.model / "model_card.json").read_text())
    dataset = Path(card["dataset"]["uri"])
    manifest = read_manifest(str(dataset))
    labels = manifest["classes"]
    job = TrainingJob(
        dataset_uri=str(dataset), output_uri=str(args.model), image_size=card["params"]["image_size"]
    )
    val = split_files(manifest, "val")
    sample = [val[i] for i in sorted(np.random.default_rng(0).choice(len(val), args.images, replace=False))]
    train = split_files(manifest, "train")
    with tempfile.TemporaryDirectory(prefix="dogs-cats-int8-cpus-") as tmp:
        work = Path(tmp)
        images = np.concatenate([x.numpy() for x, _ in make_dataset(dataset, sample, labels, job)])
        np.save(work / "images.npy", images)
        calibration = [x.numpy() for x, _ in make_dataset(dataset, calibration_sample(train), labels, job)]
        for number, seven_bit in enumerate(TWINS.values()):
            quantize_int8(args.model / "model.onnx", work / f"twin{number}.onnx", calibration, seven_bit)
        fp32 = _scored(args.model / "model.onnx", work, emulated=False).argmax(axis=1)
        print(
            f"{len(images)} validation images; FP32's labels from this host's CPU\n\n"
            "| twin | FP32's label, this host | FP32's label, emulated Haswell "
            "| largest probability change between the CPUs | labels changed |\n|---|---|---|---|---|"
        )
        for number, name in enumerate(TWINS):
            native = _scored(work / f"twin{number}.onnx", work, emulated=False)
            emulated = _scored(work / f"twin{number}.onnx", work, emulated=True)
            print(
                f"| {name} | {(native.argmax(axis=1) == fp32).mean():.2%} "
                f"| {(emulated.argmax(axis=1) == fp32).mean():.2%} | {np.abs(native - emulated).max():.3f} "
                f"| {int((native.argmax(axis=1) != emulated.argmax(axis=1)).sum())} |",
                flush=True,
            )
    return 0


def _scored(model: Path, work: Path, emulated: bool) -> np.ndarray:
    """The model's probabilities over the saved images, from a fresh interpreter (under qemu if asked)."""
    out = work / f"{model.stem}-{'emulated' if emulated else 'native'}.npy"
    code = (
        "import sys, numpy as np; from training.quantize import onnx_probabilities; "
        "x = np.load(sys.argv[2]); "
        "np.save(sys.argv[3], onnx_probabilities(sys.argv[1], (x[i:i + 16] for i in range(0, len(x), 16))))"
    )
    command = [sys.executable, "-c", code, str(model), str(work / "images.npy"), str(out)]
    subprocess.run([*EMULATED_CPU, *command] if emulated else command, check=True, capture_output=True)
    return np.load(out)


if __name__ == "__main__":
    sys.exit(main())
