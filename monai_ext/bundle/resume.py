"""Continuing an interrupted training run from its latest checkpoint.

MONAI's ``CheckpointLoader`` needs the path of one file written before, and leaves the best-model saver and the
evaluator's best metric at their initial values, so after a resume a worse model can overwrite the best one.
:class:`ResumableCheckpointer` writes the whole training state after every epoch (atomically, SHA-256 recorded) and,
with ``resume=True``, finds the newest complete one and restores it before the first epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from monai_ext.sharing.checkpoint import AtomicDiskSaver, load_checkpoint, read_manifest

__all__ = ["BestMetricState", "ResumableCheckpointer", "find_latest_checkpoint"]


class BestMetricState:
    """Makes a MONAI workflow's ``state.best_metric`` and ``state.best_metric_epoch`` savable in a checkpoint.

    Args:
        engine: the evaluator (or trainer) whose best metric should survive a resume.
    """

    def __init__(self, engine: Engine) -> None:
        if not hasattr(engine, "state"):
            raise TypeError(f"engine must be an Ignite engine, got {type(engine).__name__}")
        self.engine = engine

    def state_dict(self) -> dict[str, float | int]:
        """Return ``{"best_metric": float, "best_metric_epoch": int}``."""
        return {
            "best_metric": float(getattr(self.engine.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(self.engine.state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the best metric and its epoch onto the engine's state."""
        self.engine.state.best_metric = float(state_dict["best_metric"])
        self.engine.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


def find_latest_checkpoint(save_dir: str | os.PathLike, keys: list[str]) -> Path | None:
    """Return the newest recorded checkpoint in ``save_dir`` that holds every one of ``keys``, or ``None``.

    Only files recorded in the directory's SHA-256 manifest count, so a file whose write was interrupted before it
    was recorded is never picked.
    """
    candidates = [
        (record["sequence"], name)
        for name, record in read_manifest(save_dir).items()
        if set(keys) <= set(record.get("keys") or ()) and (Path(save_dir) / name).is_file()
    ]
    return Path(save_dir) / max(candidates)[1] if candidates else None


class ResumableCheckpointer:
    """Save the full training state after every epoch; with ``resume=True`` continue from the newest one.

    Attach it to the trainer. Its epoch-end save is registered when the trainer starts, so it runs after every
    handler attached before (validation, learning-rate steps, best-model saving) and captures their results.

    Args:
        save_dir: directory of the checkpoints (created if missing).
        save_dict: objects with ``state_dict``/``load_state_dict`` to save and restore, e.g.
            ``{"network": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer,
            "best_model_saver": <AtomicCheckpointSaver>, "best_metric": BestMetricState(evaluator)}``.
        resume: the documented switch: when True and a checkpoint holding every key of ``save_dict`` exists in
            ``save_dir``, restore it before the first epoch; when False, start afresh.
        file_prefix: prefix of the checkpoint file names (``{file_prefix}_checkpoint_epoch=N.pt``).
        n_saved: how many of the latest checkpoints to keep.
        save_interval: save every this many epochs.
        name: logger name; defaults to the trainer's logger.

    Raises:
        ValueError: on a bad argument, or (when the trainer starts) a checkpoint from a run longer than this one's
            ``max_epochs``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        file_prefix: str = "",
        n_saved: int = 1,
        save_interval: int = 1,
        name: str | None = None,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        missing = [key for key, obj in save_dict.items() if not hasattr(obj, "load_state_dict")]
        if missing:
            raise ValueError(f"save_dict entries {missing} have no state_dict/load_state_dict, so cannot be resumed")
        if n_saved < 1 or save_interval < 1:
            raise ValueError(f"n_saved and save_interval must be >= 1, got {n_saved} and {save_interval}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.logger = logging.getLogger(name)
        self._name = name
        self._checkpoint = Checkpoint(
            to_save=self.save_dict,
            save_handler=AtomicDiskSaver(self.save_dir),
            filename_prefix=file_prefix,
            score_function=lambda engine: engine.state.epoch,
            score_name="epoch",
            n_saved=n_saved,
        )
        self.resumed_from: Path | None = None
        self._save_registered = False

    def attach(self, engine: Engine) -> None:
        """Restore on ``STARTED`` (when resuming) and save at every ``save_interval``-th ``EPOCH_COMPLETED``."""
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._start)

    def _start(self, engine: Engine) -> None:
        if self.resume:
            self._restore(engine)
        if not self._save_registered:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._checkpoint)
            self._save_registered = True

    def _restore(self, engine: Engine) -> None:
        path = find_latest_checkpoint(self.save_dir, list(self.save_dict))
        if path is None:
            self.logger.info(f"resume: no checkpoint with {sorted(self.save_dict)} in {self.save_dir}, starting afresh")
            return
        checkpoint = load_checkpoint(path)
        missing = sorted(set(self.save_dict) - set(checkpoint))
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {missing}, which save_dict needs to resume")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.save_dict, checkpoint={k: checkpoint[k] for k in self.save_dict})
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"{path}: the checkpoint has finished epoch {engine.state.epoch}, beyond this run's max_epochs "
                    f"{max_epochs}; raise max_epochs to train further"
                )
            engine.state.max_epochs = max_epochs
        # Track the restored file so it is rotated out like any file this run writes.
        self._checkpoint.load_state_dict({"_saved": [(engine.state.epoch, path.name)]})
        self.resumed_from = path
        self.logger.info(f"resume: restored {sorted(self.save_dict)} from {path} (epoch {engine.state.epoch})")
