"""Validation at the last epoch: MONAI's ValidationHandler and ours side by side on a short run."""

import pytest
from ignite.engine import Engine
from monai.handlers import ValidationHandler

from monai_ext.bundle.validation import LastEpochValidationHandler


class _CountingEvaluator:
    """What a validation handler calls: ``run(epoch)``; records the trainer's epoch at each call."""

    def __init__(self):
        self.epochs = []

    def run(self, global_epoch=1):
        self.epochs.append(global_epoch)


@pytest.mark.parametrize(
    ("max_epochs", "interval", "monai_epochs", "our_epochs"),
    [(2, 5, [], [2]), (7, 5, [5], [5, 7]), (10, 5, [5, 10], [5, 10]), (1, 1, [1], [1])],
)
def test_the_last_epoch_is_validated_whatever_the_interval(max_epochs, interval, monai_epochs, our_epochs):
    validated = {}
    for name, handler_class in (("monai", ValidationHandler), ("ours", LastEpochValidationHandler)):
        evaluator = _CountingEvaluator()
        trainer = Engine(lambda engine, batch: None)
        handler = handler_class(interval=interval)
        handler.validator = evaluator  # MONAI type-checks a validator given to __init__; the handler only calls run()
        handler.attach(trainer)
        trainer.run([0], max_epochs=max_epochs)
        validated[name] = evaluator.epochs
    assert validated == {"monai": monai_epochs, "ours": our_epochs}


def test_iteration_level_validation_is_left_as_monai_has_it():
    evaluator = _CountingEvaluator()
    trainer = Engine(lambda engine, batch: None)
    handler = LastEpochValidationHandler(interval=2, epoch_level=False)
    handler.validator = evaluator
    handler.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=1)
    assert evaluator.epochs == [1], "every second iteration of three: once, and not again at the end"
