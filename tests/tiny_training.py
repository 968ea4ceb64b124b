"""A tiny but real MONAI/Ignite training run used by the resume and reproducibility tests.

``python tests/tiny_training.py OUT_DIR --max_epochs 6 [--resume]`` trains a one-layer 3D conv net to reproduce a fixed
filter, validates every epoch with MONAI's SupervisedEvaluator, keeps the best model as ``OUT_DIR/model.pt`` and the
resumable training state next to it, and writes ``OUT_DIR/summary.json`` when training completes. The learning rate
grows every epoch, so validation improves, then worsens: the best epoch lies in the middle of the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.metrics import MeanSquaredError
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler, from_engine

from monai_ext.bundle.resume import BestMetricState, ResumableCheckpointer
from monai_ext.sharing.checkpoint import AtomicCheckpointSaver

LR = 0.002
LR_GAMMA = 2.0


def _data(seed: int, count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    kernel = torch.randn(1, 1, 3, 3, 3, generator=generator)
    images = torch.randn(count, 1, 8, 8, 8, generator=generator)
    labels = torch.nn.functional.conv3d(images, kernel, padding=1)
    return [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]


def train(
    out_dir: str | Path,
    max_epochs: int,
    resume: bool = False,
    seed: int = 0,
    shuffle: bool = False,
    iteration_delay_s: float = 0.0,
    carry_best: bool = True,
) -> dict:
    """Train, and return the summary also written to ``out_dir/summary.json``.

    ``carry_best=False`` resumes only what MONAI's CheckpointLoader restores (network, optimizer, scheduler, trainer).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    network = torch.nn.Conv3d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(network.parameters(), lr=LR, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=LR_GAMMA)
    train_loader = torch.utils.data.DataLoader(
        _data(1, 8), batch_size=2, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )
    val_loader = torch.utils.data.DataLoader(_data(1, 12)[8:], batch_size=2)

    best_saver = AtomicCheckpointSaver(
        str(out_dir),
        {"network": network},
        save_key_metric=True,
        key_metric_filename="model.pt",
        key_metric_negative_sign=True,
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_loader,
        network=network,
        key_val_metric={"val_mse": MeanSquaredError(output_transform=from_engine(["pred", "label"]))},
        metric_cmp_fn=lambda current, best: current < best,
        val_handlers=[best_saver],
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False), ValidationHandler(1, evaluator)],
    )
    save_dict = {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    if carry_best:
        save_dict.update(best_model_saver=best_saver, best_metric=BestMetricState(evaluator))
    checkpointer = ResumableCheckpointer(out_dir, save_dict, resume=resume)
    checkpointer.attach(trainer)
    epochs_run: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs_run.append(engine.state.epoch))
    if iteration_delay_s:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: time.sleep(iteration_delay_s))
    trainer.run()
    summary = {
        "epochs_run": epochs_run,
        "final_epoch": trainer.state.epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "best_metric": float(evaluator.state.best_metric),
        "best_metric_epoch": int(evaluator.state.best_metric_epoch),
        "resumed_from": None if checkpointer.resumed_from is None else checkpointer.resumed_from.name,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--max_epochs", type=int, default=6)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--iteration_delay_s", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; results depend on it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args.out_dir, args.max_epochs, resume=args.resume, iteration_delay_s=args.iteration_delay_s)


if __name__ == "__main__":
    main()
