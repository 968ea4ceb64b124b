"""Validation during training that also runs after the last epoch, so that every run that trains saves a model."""

from __future__ import annotations

from typing import Any

from ignite.engine import Events
from monai.handlers import ValidationHandler

__all__ = ["LastEpochValidationHandler"]


class LastEpochValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` (same arguments) that also validates after the trainer's last epoch.

    MONAI's validates every ``interval`` epochs only: with ``max_epochs 2`` and ``interval 5`` a run never validates,
    so the best-model saver never saves and nothing says so. This one adds the last epoch when ``interval`` does not
    divide ``max_epochs`` (epoch-level validation only).
    """

    def attach(self, engine: Any) -> None:
        super().attach(engine)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_epoch_only), self)

    def _last_epoch_only(self, engine: Any, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0
