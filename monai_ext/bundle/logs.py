"""What a bundle run shows a person: a loss progress bar per training epoch, and evaluation logs without "best"."""

from __future__ import annotations

import logging
from typing import Any

from ignite.handlers import ProgressBar
from monai.handlers import StatsHandler
from monai.utils import is_scalar

__all__ = ["EvaluationStatsHandler", "LossProgressBar", "image_meta", "loss_value"]

# MONAI's Workflow logs this whenever a key metric beats the previous epochs, including the single epoch of an
# evaluation run, where there is nothing to beat.
_BEST_METRIC_PREFIX = "Got new best metric"


def image_meta(batch: Any, key: str = "image") -> list[dict]:
    """The metadata of each case's image in a decollated batch: MONAI's ``MetricsSaver`` takes it as
    ``batch_transform`` to name each row of its CSV after the case's file.

    Raises:
        KeyError: when a case holds no ``key``.
    """
    return [dict(case[key].meta) for case in batch]


def loss_value(output: Any, key: str = "loss") -> float:
    """Return the loss of one trainer iteration as a float, whether the trainer decollates its output or not.

    MONAI's ``from_engine(["loss"], first=True)`` gives the value for a decollated output (a list of per-case dicts)
    but a 1-tuple for a batch dict (``decollate=False``), which TensorBoard handlers then skip with a warning; use
    this as ``output_transform`` of loss loggers instead.

    Raises:
        KeyError: when the output holds no ``key``.
    """
    item = output[0] if isinstance(output, (list, tuple)) else output
    if not isinstance(item, dict) or key not in item:
        raise KeyError(f"the trainer output has no '{key}' entry (got {type(item).__name__}).")
    value = item[key]
    return float(value.item() if hasattr(value, "item") else value)


class _DropBestMetricRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BEST_METRIC_PREFIX)


class EvaluationStatsHandler(StatsHandler):
    """MONAI's ``StatsHandler`` for a one-pass evaluation: the metrics once, with no talk of a best value.

    MONAI's handler follows a training run: it logs ``Key metric: ... best value ... at epoch ...`` and the engine
    logs ``Got new best metric of ...``, which read as if a model had been selected. This handler logs
    ``Evaluation of N cases -- NAME: VALUE ...`` and drops the engine's best-metric line.

    Args:
        kwargs: as for ``monai.handlers.StatsHandler``; ``iteration_log`` defaults to ``False`` and
            ``epoch_print_logger`` is set by this class.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("iteration_log", False)
        super().__init__(**kwargs)
        self.epoch_print_logger = self._print_metrics

    def attach(self, engine: Any) -> None:
        """Attach as ``StatsHandler`` does and keep the engine's best-metric records out of the log."""
        super().attach(engine)
        if not any(isinstance(f, _DropBestMetricRecords) for f in engine.logger.filters):
            engine.logger.addFilter(_DropBestMetricRecords())

    def _print_metrics(self, engine: Any) -> None:
        scalars = {name: value for name, value in engine.state.metrics.items() if is_scalar(value)}
        if not scalars:
            return
        cases = len(engine.data_loader.dataset) if hasattr(engine.data_loader, "dataset") else engine.state.iteration
        text = " ".join(f"{name}: {float(value):.4f}" for name, value in scalars.items())
        self.logger.info(f"Evaluation of {cases} cases -- {text}")


class LossProgressBar(ProgressBar):
    """Ignite's ``ProgressBar`` showing the running loss, attachable as a MONAI handler (``attach(engine)``).

    Put it first in a trainer's handler list: Ignite runs handlers in the order they were attached, so the bar
    closes at the end of each epoch before the validation handler logs, and no log line lands inside a bar.

    Args:
        loss_key: key of the loss in the trainer's output.
        persist: keep each epoch's finished bar on screen.
        tqdm_kwargs: passed to ``ignite.handlers.ProgressBar``.
    """

    def __init__(self, loss_key: str = "loss", persist: bool = True, **tqdm_kwargs: Any) -> None:
        super().__init__(persist=persist, **tqdm_kwargs)
        self.loss_key = loss_key

    def attach(self, engine: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Attach to ``engine``, showing ``loss_key`` of each iteration's output; ``kwargs`` as for Ignite."""
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, **kwargs)

    def _loss(self, output: Any) -> dict[str, float]:
        return {self.loss_key: loss_value(output, self.loss_key)}
