"""``python -m monai_ext export BUNDLE_DIR``: a bundle's trained network as ``torch.export`` (.pt2), ONNX and
TorchScript files, each loaded back without monai_ext and checked against the eager network.

TorchScript is what MONAI's ``ckpt_export`` and the Model Zoo's CI use, and torch 2.13 deprecates
``torch.jit.script``. A ``.pt2`` program loads with plain torch (``torch.export.load(path).module()``), and an ONNX
file runs in onnxruntime and other ONNX runtimes. All three take any batch size; the spatial size is the bundle's
ROI, as sliding-window inference feeds it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_ext.sharing.checkpoint import load_checkpoint, record_sha256

__all__ = ["FORMATS", "ExportMismatchError", "export", "export_network"]

# format -> file suffix, and what loads it back
FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "ts": ".ts"}
LOADERS = {"pt2": "torch.export.load", "onnx": "onnxruntime", "ts": "torch.jit.load"}
MAX_BATCH = 64


class ExportMismatchError(RuntimeError):
    """A reloaded export's outputs differ from the eager network's by more than the tolerance; the message says by
    how much, for which output."""


def _outputs(value: Any) -> list[torch.Tensor]:
    return [value] if isinstance(value, torch.Tensor) else [v for v in value if isinstance(v, torch.Tensor)]


def _write(network: torch.nn.Module, example: torch.Tensor, path: Path, fmt: str, names: Sequence[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if fmt == "pt2":
        torch.export.save(torch.export.export(network, (example,), dynamic_shapes=({0: batch},)), path)
    elif fmt == "onnx":
        # the exporter warns about torchvision operators a monai network never uses, and about its own internals
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        level, registration.level = registration.level, logging.ERROR
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                program = torch.onnx.export(
                    network, (example,), dynamo=True, dynamic_shapes=({0: batch},), input_names=["image"],
                    output_names=list(names), verbose=False,
                )  # fmt: skip
        finally:
            registration.setLevel(level)
        program.save(str(path))
    else:
        torch.jit.script(network).save(str(path))


def _reloaded(path: Path, fmt: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The exported file as a function, loaded the way a user without monai_ext loads it."""
    if fmt == "pt2":
        module = torch.export.load(path).module()
        return lambda x: _outputs(module(x))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
    module = torch.jit.load(str(path))
    return lambda x: _outputs(module(x))


def export_network(
    network: torch.nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike,
    fmt: str,
    output_names: Sequence[str] = ("output",),
    tolerance: float = 1e-5,
) -> float:
    """Export ``network`` (in eval mode, on CPU) to ``path`` in format ``fmt``, reload it, and compare it with the
    eager network on a random batch of 3 (traced with 2).

    Args:
        network: the network, with its trained weights.
        input_shape: one input without the batch dimension: ``(channels, *spatial)``.
        path: the file to write.
        fmt: ``pt2`` (``torch.export``), ``onnx`` or ``ts`` (TorchScript).
        output_names: names of the network's outputs in the ONNX graph.
        tolerance: the largest absolute difference from the eager outputs accepted.

    Returns:
        The largest absolute difference between the reloaded export's outputs and the eager network's.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
        ExportMismatchError: the difference exceeds ``tolerance``; the file is removed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    network = network.eval().cpu()
    path = Path(path)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, *input_shape, generator=generator)  # not 1: torch.export would fix a batch of 1
    check = torch.rand(3, *input_shape, generator=generator)  # another batch size than traced: the batch is dynamic
    with torch.no_grad():
        _write(network, example, path, fmt, output_names)
        expected = _outputs(network(check))
        found = _reloaded(path, fmt)(check)
    differences = [(e - f).abs().max().item() for e, f in zip(expected, found, strict=True)]
    worst = max(differences)
    if worst > tolerance:
        path.unlink(missing_ok=True)
        raise ExportMismatchError(
            f"{path.name}: output {differences.index(worst)} differs from the eager network by {worst:.3g} "
            f"(tolerance {tolerance:g}); not written."
        )
    return worst


def export(
    bundle_dir: str,
    formats: str | Sequence[str] = ("pt2", "onnx", "ts"),
    config_file: str = "configs/inference.json",
    network_id: str = "export_network_def",
    ckpt_file: str | None = None,
    key_in_ckpt: str = "",
    output_dir: str | None = None,
    tolerance: float = 1e-5,
    **override: Any,
) -> str:
    """Export a bundle's trained network to torch.export (.pt2), ONNX and TorchScript, each checked against eager.

    The network is the config's ``export_network_def``, built with the configuration the model was trained with,
    holding the weights of ``model_file`` (``models/model.pt``; SHA-256 checked, loaded weights-only). Each file is
    reloaded (``torch.export.load``, onnxruntime, ``torch.jit.load``) and run on a random batch; its outputs must be
    within ``tolerance`` of the eager network's. The files go beside the model, with their SHA-256 recorded.
    Evaluates the bundle's configs in this process, as MONAI's ``ckpt_export`` does: run it on bundles you trust.

    Example:

        python -m monai_ext export bundles/medt_segmentation_3d --formats pt2,onnx

    Args:
        bundle_dir: the bundle root, holding configs/.
        formats: any of pt2, onnx, ts (comma-separated or a list).
        config_file: the config that defines the network, relative to the bundle root.
        network_id: the config id of the network.
        ckpt_file: the weights to export; default the config's ``model_file``.
        key_in_ckpt: the key of the network's state dict in the checkpoint, when it holds more than that.
        output_dir: where to write model.pt2, model.onnx and model.ts; default the folder of the bundle's model_file.
        tolerance: the largest absolute difference from the eager outputs accepted.
        override: --id value pairs, as for `python -m monai.bundle run`.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_dir).resolve()
    formats = [f for f in formats.split(",") if f] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SystemExit(f"export: unknown format {', '.join(unknown)}; expected any of {', '.join(FORMATS)}")
    parser = ConfigParser()
    parser.read_config(root / config_file)
    meta_file = root / "configs" / "metadata.json"
    if meta_file.is_file():
        parser.read_meta(meta_file)
    parser.update({"bundle_root": str(root), **override})
    network = parser.get_parsed_content(network_id)
    model_file = Path(ckpt_file) if ckpt_file else Path(parser.get_parsed_content("model_file"))
    state = load_checkpoint(model_file)
    network.load_state_dict(state[key_in_ckpt] if key_in_ckpt else state)
    inputs = parser.get("_meta_#network_data_format#inputs#image", {})
    channels = parser.get_parsed_content("in_channels") if "in_channels" in parser else inputs.get("num_channels", 1)
    shape = (int(channels), *(int(s) for s in parser.get_parsed_content("roi_size")))
    with torch.no_grad():
        count = len(_outputs(network.eval()(torch.zeros(1, *shape))))
    declared = list(parser.get("_meta_#network_data_format#outputs", {}))
    names = declared if len(declared) == count else [f"output{i}" for i in range(count)]
    folder = Path(output_dir) if output_dir else model_file.parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"export: {network.__class__.__name__} with input (batch, {', '.join(map(str, shape))}) from {root}"]
    for fmt in formats:
        path = folder / f"model{FORMATS[fmt]}"
        worst = export_network(network, shape, path, fmt, names, tolerance)
        record_sha256(path)
        lines.append(f"  {path}: reloaded with {LOADERS[fmt]}, largest difference from eager {worst:.2g}")
    return "\n".join(lines)
