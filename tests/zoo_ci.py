"""The Model Zoo CI's in-process steps on one bundle folder, run as a script (each step's logging.conf is applied to
the whole process, as the Zoo's runner does, so it does not run inside pytest).

    python zoo_ci.py BUNDLE_DIR OVERRIDES_JSON

Steps, in the Zoo's order: ``ConfigWorkflow`` with ``check_properties`` for train, then train + evaluate, then
inference; ``verify_net_in_out`` (unless OVERRIDES_JSON holds ``"skip_verify_net": true``); ``ckpt_export`` to
``models/model.ts``. Training runs without a ``bundle_root`` override (the bundle finds itself); the later steps pass
``bundle_root`` as the Zoo does. ``verify_net_in_out`` and ``ckpt_export`` run without ``dataset_dir``, as on a
machine that has the bundle and its model but not the training data. Prints one ``STEP name: result`` line per step.
"""

import json
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out


def _workflow(configs: Path, files: list[str], workflow_type: str, overrides: dict) -> list[str] | None:
    workflow = ConfigWorkflow(
        config_file=[str(configs / name) for name in files],
        workflow_type=workflow_type,
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return missing


def main(bundle: Path, overrides: dict) -> None:
    torch.set_num_threads(2)
    configs = bundle / "configs"
    skip_verify_net = overrides.pop("skip_verify_net", False)
    training = {k: v for k, v in overrides.items() if k != "bundle_root"}
    inference = {k: v for k, v in overrides.items() if not k.startswith(("train#", "validate#"))}
    model_alone = {k: v for k, v in inference.items() if k != "dataset_dir"}
    print("STEP train:", _workflow(configs, ["train.json"], "train", training), flush=True)
    print("STEP evaluate:", _workflow(configs, ["train.json", "evaluate.json"], "train", overrides), flush=True)
    print("STEP infer:", _workflow(configs, ["inference.json"], "infer", inference), flush=True)
    if not skip_verify_net:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            device="cpu",
            **model_alone,
        )
        print("STEP verify_net_in_out: ok", flush=True)
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models" / "model.ts"),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        **model_alone,
    )
    print("STEP ckpt_export: ok", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
