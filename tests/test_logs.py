"""What a run shows a person: MONAI's and Ignite's messages beside ours, on real engines with a tiny network."""

import csv
import io
import json
import logging
import re

import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, MetricsSaver, StatsHandler, ValidationHandler, from_engine

from monai_ext.bundle.logs import (
    ClassNamedMetricsSaver,
    LossProgressBar,
    SkipEmptyInputSummary,
    TidyEngineRecords,
    tidy_engine_logs,
)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _untidy():
    """Take off the filters ``tidy_engine_logs`` installs, so that tests after one that calls it see MONAI's logs."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    for filterer in [*loggers, *(handler for logger in loggers for handler in logger.handlers)]:
        for f in [f for f in filterer.filters if isinstance(f, (TidyEngineRecords, SkipEmptyInputSummary))]:
            filterer.removeFilter(f)


def _engines(tmp_path, max_epochs=2):
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 1)
    image = torch.rand(1, 1, 4, 4, 4)
    label = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 4, 4, 4)), 3).permute(0, 4, 1, 2, 3).float()
    data = [{"image": image, "label": label}]
    dice = MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=data, network=network, key_val_metric={"val_mean_dice": dice}
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=data, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
        train_handlers=[ValidationHandler(interval=1, validator=evaluator)],
    )  # fmt: skip
    StatsHandler(iteration_log=False, name="stats").attach(evaluator)
    return trainer, evaluator


def test_engine_messages_say_what_happens_and_round_the_best_value(tmp_path):
    seen = {}
    for name, filters in (("monai", []), ("ours", [TidyEngineRecords()])):
        collect = _Collect()
        for f in filters:
            collect.addFilter(f)
        root = logging.getLogger()
        root.addHandler(collect)
        level, root.level = root.level, logging.INFO
        try:
            trainer, _ = _engines(tmp_path)
            trainer.run()
        finally:
            root.removeHandler(collect)
            root.setLevel(level)
        seen[name] = collect.messages
    assert "Engine run resuming from iteration 0, epoch 0 until 2 epochs" in seen["monai"]
    assert "Engine run resuming from iteration 0, epoch 1 until 2 epochs" in seen["monai"]
    assert any(m.startswith("Got new best metric of val_mean_dice: 0.") and len(m.split(": ")[1]) > 8
               for m in seen["monai"])  # fmt: skip
    assert "Engine run starting: 2 epochs" in seen["ours"]
    assert "Evaluation run (epoch 1)" in seen["ours"] and "Evaluation run (epoch 2)" in seen["ours"]
    assert not any("resuming from iteration 0" in m for m in seen["ours"])
    best = [m for m in seen["ours"] if m.startswith(("Got new best metric", "Key metric:"))]
    assert best and all(len(m.split(": ")[2 if m.startswith("Key") else 1].split()[0]) == 6 for m in best), best
    assert len(seen["ours"]) == len(seen["monai"]), "the filter rewrites records, it drops none"


def test_per_class_columns_are_named_after_the_classes(tmp_path):
    _, evaluator = _engines(tmp_path)
    MetricsSaver(save_dir=str(tmp_path / "monai"), metric_details="*", summary_ops=["mean"]).attach(evaluator)
    ours = ClassNamedMetricsSaver(["liver", "tumour"], save_dir=str(tmp_path / "ours"), metric_details="*",
                                  summary_ops=["mean"])  # fmt: skip
    ours.attach(evaluator)
    evaluator.run()
    header = {}
    for name in ("monai", "ours"):
        with open(tmp_path / name / "val_mean_dice_raw.csv") as f:
            header[name] = next(csv.reader(f))
    assert header == {
        "monai": ["filename", "class0", "class1", "mean"],
        "ours": ["filename", "liver", "tumour", "mean"],
    }
    for name, classes in (("monai", ["class0", "class1"]), ("ours", ["liver", "tumour"])):
        summary = (tmp_path / name / "val_mean_dice_summary.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in summary[1:3]] == classes
    raw = {n: (tmp_path / n / "val_mean_dice_raw.csv").read_text().splitlines()[1] for n in ("monai", "ours")}
    assert raw["monai"] == raw["ours"], "only the names change"


def test_without_a_terminal_the_progress_bar_logs_one_line_per_epoch(tmp_path, caplog):
    trainer, _ = _engines(tmp_path, max_epochs=2)
    LossProgressBar(file=io.StringIO()).attach(trainer)
    with caplog.at_level(logging.INFO, logger="monai_ext.bundle.logs"):
        trainer.run()
    lines = [r.getMessage() for r in caplog.records if r.name == "monai_ext.bundle.logs"]
    assert [line.split(", loss")[0] for line in lines] == ["Epoch [1/2]: 1 iterations", "Epoch [2/2]: 1 iterations"]
    assert all(float(line.rsplit(" ", 1)[1]) >= 0 for line in lines)


def test_tidying_reaches_monai_stats_handler_which_keeps_its_own_log_handler(tmp_path, capfd):
    tidy_engine_logs()  # first, as a config's initialize runs before its handlers are built
    trainer, evaluator = _engines(tmp_path, max_epochs=1)
    StatsHandler(iteration_log=False).attach(evaluator)  # MONAI's default logger: its own handler, not propagated
    own = logging.getLogger("monai.handlers.StatsHandler")
    assert own.handlers and not own.propagate
    try:
        trainer.run()
    finally:
        _untidy()
    printed = capfd.readouterr().out
    assert re.search(r"Key metric: val_mean_dice best value: \d\.\d{4} at epoch: 1\n", printed), printed


def _runner_summary(tmp_path, initialize, **override):
    """What MONAI's ``python -m monai.bundle run`` logs on its own logger for a config whose ``initialize`` is given."""
    from monai.bundle.scripts import run

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"max_epochs": 2, "initialize": initialize, "run": ["$None"]}))
    (tmp_path / "metadata.json").write_text("{}")
    _untidy()  # in-process bundle runs of other tests leave them on
    runner = logging.getLogger("monai.bundle.scripts")
    collect = _Collect()
    runner.addHandler(collect)
    try:
        run(config_file=str(config), **override)
    finally:
        runner.removeHandler(collect)
        _untidy()
    return collect.messages


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_the_bundle_runner_skips_an_empty_input_summary_and_keeps_one_of_overrides(tmp_path):
    tidy = ["$import monai_ext", "$monai_ext.bundle.logs.tidy_engine_logs()"]
    header = "--- input summary of monai.bundle.scripts.run ---"
    assert _runner_summary(tmp_path, initialize=[]) == [header, "---\n\n"]
    assert _runner_summary(tmp_path, initialize=tidy) == []
    assert _runner_summary(tmp_path, initialize=tidy, max_epochs=1) == [header, "> max_epochs: 1", "---\n\n"]
