"""Per-epoch checkpoints in the bucket, so a retried task or restarted pod resumes.

After every epoch the whole model (weights and optimizer state) is written as
`epoch-NNN.keras`, then `state.json` pointing at it. The state file is written
last, so it always names a complete checkpoint: a crash at any moment loses at
most the epoch in progress, and no epoch is trained twice. The same callback
does early stopping, with its counters in the state file, so stopping survives
a restart too; the best epoch's model weights are kept as `best-epoch-NNN.weights.npz`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core import storage
from core.settings import join_uri

log = logging.getLogger(__name__)

STATE = "state.json"


class BucketCheckpoint(keras.callbacks.Callback):
    def __init__(self, uri: str, *, early_stopping_patience: int, monitor: str = "val_loss") -> None:
        super().__init__()
        self.uri = uri
        self.early_stopping_patience = early_stopping_patience
        self.monitor = monitor
        self.state: dict[str, Any] = {
            "completed_epochs": 0,
            "checkpoint": None,
            "history": {},
            "best": math.inf,
            "best_epoch": 0,
            "best_weights": None,
            "wait": 0,
            "stopped_early": False,
            "fine_tune_from": None,  # the epoch after which the backbone's top blocks train
        }

    def resume(self) -> keras.Model | None:
        """The model of the last completed epoch, or None when starting afresh."""
        state_uri = join_uri(self.uri, STATE)
        if not storage.exists(state_uri):
            return None
        self.state = json.loads(storage.read_text(state_uri))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / self.state["checkpoint"]
            storage.download_file(join_uri(self.uri, self.state["checkpoint"]), path)
            model = keras.models.load_model(path)
        log.info("resuming after epoch %d from %s", self.state["completed_epochs"], self.uri)
        return model

    @property
    def finished(self) -> bool:
        return bool(self.state["stopped_early"])

    @property
    def fine_tuning(self) -> bool:
        return self.state.get("fine_tune_from") is not None

    def start_fine_tuning(self) -> None:
        """A new phase: patience starts afresh; the best epoch so far stays the one to beat.

        Recorded with the next epoch's state, so a crash before it resumes the head phase's end."""
        self.state.update(fine_tune_from=self.state["completed_epochs"], wait=0, stopped_early=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        completed = epoch + 1
        history = self.state["history"]
        history.setdefault("epoch", []).append(completed)
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        superseded = [self.state["checkpoint"]]
        value = float(logs.get(self.monitor, math.inf))
        if value < self.state["best"]:
            superseded.append(self.state["best_weights"])
            best_name = f"best-epoch-{completed:03d}.weights.npz"
            self._upload(best_name, lambda path: np.savez(path, *self.model.get_weights()))
            self.state.update(best=value, best_epoch=completed, best_weights=best_name, wait=0)
        else:
            self.state["wait"] += 1
        name = f"epoch-{completed:03d}.keras"
        self._upload(name, self.model.save)
        self.state.update(completed_epochs=completed, checkpoint=name)
        if self.state["wait"] >= self.early_stopping_patience:
            self.state["stopped_early"] = True
            self.model.stop_training = True
            log.info(
                "early stop after epoch %d: %s has not improved on %.4f (epoch %d) for %d epochs",
                completed, self.monitor, self.state["best"], self.state["best_epoch"],
                self.early_stopping_patience,
            )  # fmt: skip
        # The state names only files already uploaded; what it no longer names goes after it.
        storage.write_text(join_uri(self.uri, STATE), json.dumps(self.state, indent=1))
        for old in superseded:
            if old:
                storage.delete(join_uri(self.uri, old))

    def _upload(self, name: str, save: Callable[[Path], object]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            save(path)
            storage.upload_file(path, join_uri(self.uri, name))

    def restore_best(self, model: keras.Model) -> None:
        """Load the best epoch's weights (early stopping keeps the best, not the last).

        Model weights only: Keras' weights file carries the optimizer too, and a best epoch
        from the head phase holds another optimizer than a fine-tuned model's."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / self.state["best_weights"]
            storage.download_file(join_uri(self.uri, self.state["best_weights"]), path)
            with np.load(path) as saved:
                model.set_weights([saved[f"arr_{index}"] for index in range(len(saved.files))])
