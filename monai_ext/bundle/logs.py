"""What a bundle run shows a person: a loss progress bar per training epoch, evaluation logs without "best", engine
messages that say what happens, and metric files whose columns carry the class names."""

from __future__ import annotations

import csv
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite.handlers import ProgressBar
from monai.apps.utils import get_logger
from monai.handlers import MetricsSaver, StatsHandler
from monai.utils import is_scalar

from monai_ext.bundle.errors import printed_alone

__all__ = [
    "ClassNamedMetricsSaver",
    "EvaluationStatsHandler",
    "LossProgressBar",
    "SkipEmptyInputSummary",
    "TidyEngineRecords",
    "image_meta",
    "loss_value",
    "tidy_engine_logs",
]

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

    When the bar's stream is not a terminal (output redirected to a log file), a bar would be written as one line
    of carriage returns per epoch; the handler then logs one line per epoch instead:
    ``Epoch [2/60]: 4 iterations, loss 1.3312``.

    Args:
        loss_key: key of the loss in the trainer's output.
        persist: keep each epoch's finished bar on screen.
        tqdm_kwargs: passed to ``ignite.handlers.ProgressBar``.
    """

    def __init__(self, loss_key: str = "loss", persist: bool = True, **tqdm_kwargs: Any) -> None:
        super().__init__(persist=persist, **tqdm_kwargs)
        self.loss_key = loss_key
        self.last_loss = float("nan")

    def attach(self, engine: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Attach to ``engine``, showing ``loss_key`` of each iteration's output; ``kwargs`` as for Ignite."""
        from ignite.engine import Events

        stream = self.tqdm_kwargs.get("file", sys.stderr)
        if not (hasattr(stream, "isatty") and stream.isatty()):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._remember_loss)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)
            return
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, **kwargs)

    def _remember_loss(self, engine: Any) -> None:
        self.last_loss = loss_value(engine.state.output, self.loss_key)

    def _log_epoch(self, engine: Any) -> None:
        state = engine.state
        logging.getLogger(__name__).info(
            f"Epoch [{state.epoch}/{state.max_epochs}]: {state.epoch_length} iterations, "
            f"{self.loss_key} {self.last_loss:.4f}"
        )

    def _loss(self, output: Any) -> dict[str, float]:
        return {self.loss_key: loss_value(output, self.loss_key)}


class TidyEngineRecords(logging.Filter):
    """Rewrites Ignite and MONAI log messages that mislead or print raw floats.

    - Ignite's ``Engine run resuming from iteration 0, epoch 0 until N epochs`` on every fresh start of a trainer
      (MONAI's workflows create the engine state up front, so Ignite takes each start for a resume) becomes
      ``Engine run starting: N epochs``. A real resume (from a later iteration) keeps Ignite's message.
    - An evaluator's ``Engine run resuming from iteration 0, epoch E until E+1 epochs`` (MONAI runs it for one epoch
      numbered after the trainer's) becomes ``Evaluation run (epoch E+1)``.
    - MONAI's ``Got new best metric of NAME: 0.96633851528`` and ``Key metric: NAME best value: 0.96633851528 at
      epoch: E`` show the value to 4 decimals.
    - Records of an error that :func:`monai_ext.bundle.errors.concise_errors` prints as one line (ours, or Ctrl-C),
      which Ignite and ``StatsHandler`` log with its traceback just before, are left out.
    """

    _RESUMING = re.compile(r"Engine run resuming from iteration 0, epoch (\d+) until (\d+) epochs")
    _FLOAT = re.compile(r"(?<=: )(-?\d+\.\d{5,})(?=\s|$)")

    def filter(self, record: logging.LogRecord) -> bool:
        if printed_alone(record.exc_info[1] if record.exc_info else sys.exc_info()[1]):
            return False
        message = record.getMessage()
        tidy = message
        found = self._RESUMING.fullmatch(message)
        if found and record.name.endswith("Evaluator"):
            tidy = f"Evaluation run (epoch {found[2]})"
        elif found and found[1] == "0":
            tidy = f"Engine run starting: {found[2]} epoch{'' if found[2] == '1' else 's'}"
        if message.startswith(("Got new best metric", "Key metric:")):
            tidy = self._FLOAT.sub(lambda m: f"{float(m.group(1)):.4f}", tidy)
        if tidy != message:
            record.msg, record.args = tidy, None
        return True


class SkipEmptyInputSummary(logging.Filter):
    """Drops the input summary that ``python -m monai.bundle run`` logs when it has nothing to list.

    After a workflow's ``initialize``, MONAI's runner logs ``--- input summary of monai.bundle.scripts.run ---``,
    one ``> NAME: VALUE`` line per argument left after the config file, and ``---``. Run without overrides, that is
    a header and a closer around nothing. This filter, on the runner's logger, holds each header back until the next
    record: a closer drops both, anything else lets the header through first, so a summary of overrides is kept.

    Args:
        logger: the logger whose records it filters (MONAI's ``monai.bundle.scripts``).
    """

    _HEADER = re.compile(r"--- input summary of monai\.bundle\.scripts\.\w+ ---")
    _CLOSER = "---\n\n"

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.held: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        held, self.held = self.held, None
        if self._HEADER.fullmatch(message):
            self.held = record
            return False
        if held is not None and message == self._CLOSER:
            return False
        if held is not None:
            self.logger.callHandlers(held)
        return True


_BUNDLE_RUNNER_LOGGER = "monai.bundle.scripts"
_STATS_HANDLER_LOGGER = "monai.handlers.StatsHandler"


def tidy_engine_logs() -> None:
    """Put :class:`TidyEngineRecords` on every handler set up so far: the root logger's (from the bundle's
    ``logging.conf``), where the engines' records arrive, and those of loggers that keep their own, such as MONAI's
    ``monai.handlers.StatsHandler``; and :class:`SkipEmptyInputSummary` on MONAI's bundle runner, which logs after
    ``initialize``. Call it from a config's ``initialize``.

    A config's handlers are built after ``initialize``, and MONAI's ``StatsHandler`` gives its logger a handler of
    its own when it is built first. So this sets that logger up now, as MONAI would, for its handler to be tidied.
    """
    get_logger(_STATS_HANDLER_LOGGER)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    for handler in {handler for logger in loggers for handler in logger.handlers}:
        if not any(isinstance(f, TidyEngineRecords) for f in handler.filters):
            handler.addFilter(TidyEngineRecords())
    runner = logging.getLogger(_BUNDLE_RUNNER_LOGGER)
    if not any(isinstance(f, SkipEmptyInputSummary) for f in runner.filters):
        runner.addFilter(SkipEmptyInputSummary(runner))


class ClassNamedMetricsSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` (same arguments) whose per-class columns are named after the classes.

    MONAI's ``write_metrics_reports`` takes ``class_labels``, but its ``MetricsSaver`` never passes them, so the
    per-case CSV has columns ``class0, class1, ...`` and the summary rows of the same names, while previews and
    logs use the class names. This saver renames them in the files it wrote.

    Args:
        class_names: the name of each metric column, in order (without the background when the metric excludes it).
        kwargs: as for ``monai.handlers.MetricsSaver``.
    """

    def __init__(self, class_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.class_names = [str(name) for name in class_names]

    def __call__(self, engine: Any) -> None:
        super().__call__(engine)
        if self.output_type != "csv":
            return
        renamed = {f"class{i}": name for i, name in enumerate(self.class_names)}
        for path in Path(self.save_dir).glob("*_raw.csv"):
            self._rename(path, renamed, header=True)
        for path in Path(self.save_dir).glob("*_summary.csv"):
            self._rename(path, renamed, header=False)

    def _rename(self, path: Path, renamed: dict[str, str], header: bool) -> None:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=self.deli))
        if header and rows:
            rows[0] = [renamed.get(cell, cell) for cell in rows[0]]
        elif not header:
            rows = [[renamed.get(row[0], row[0]), *row[1:]] if row else row for row in rows]
        with open(path, "w", newline="") as f:
            csv.writer(f, delimiter=self.deli, lineterminator="\n").writerows(rows)
