"""PNG previews of 3D volumes (image, label, prediction or reconstruction slices) saved from an Ignite engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import decollate_batch

__all__ = ["SlicePreviewSaver", "case_name", "save_slice_preview"]


def case_name(item: dict[str, Any], keys: Sequence[str]) -> str:
    """Return the file name, without ``.nii``/``.nii.gz``, of the first of ``keys`` that carries image metadata."""
    for key in keys:
        meta = getattr(item.get(key), "meta", None) or {}
        source = meta.get("filename_or_obj")
        if source:
            name = os.path.basename(str(source))
            for suffix in (".nii.gz", ".nii", ".gz"):
                if name.endswith(suffix):
                    return name[: -len(suffix)]
            return os.path.splitext(name)[0]
    return "case"


def _volume(value: Any, as_label: bool) -> np.ndarray:
    array = torch.as_tensor(value).detach().float().cpu()
    if array.ndim != 4:
        raise ValueError(f"expected a channel-first 3D volume (C, H, W, D), got shape {tuple(array.shape)}.")
    if as_label:
        return (array.argmax(0) if array.shape[0] > 1 else array[0].round()).numpy()
    return array[0].numpy()


def _add_class_legend(figure: Any, n_classes: int, colour_scale: int, class_names: Sequence[str] | None) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    names = list(class_names or ())
    colours = colormaps["tab10"]
    handles = [
        Patch(color=colours(c / colour_scale), alpha=0.6, label=names[c] if c < len(names) else f"class {c}")
        for c in range(1, n_classes)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    return [handle.get_label() for handle in handles]


def save_slice_preview(
    item: dict[str, Any],
    keys: Sequence[str],
    label_keys: Sequence[str],
    filepath: str | os.PathLike,
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """Save one PNG with a panel per key: the axial slice holding most foreground of the first label key.

    Args:
        item: one case, mapping keys to channel-first 3D volumes of one spatial shape.
        keys: keys to draw, left to right; a missing key is skipped.
        label_keys: keys drawn as class maps (multi-channel volumes are argmax-ed) over the first non-label key;
            the others are drawn in grey levels.
        filepath: PNG file to write; its folder is created.
        class_names: the name of each class index, background first; with label keys drawn, a legend gives each
            foreground class's colour and name (``class N`` when not named).

    Returns:
        The legend's labels, foreground classes in index order; empty when no label key is drawn.

    Raises:
        ValueError: when no key is present or the volumes differ in spatial shape.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [k for k in keys if k in item]
    if not present:
        raise ValueError(f"none of the preview keys {list(keys)} is in the data (found {sorted(item)}).")
    volumes = {k: _volume(item[k], k in label_keys) for k in present}
    shapes = {v.shape for v in volumes.values()}
    if len(shapes) != 1:
        raise ValueError(f"preview volumes differ in shape: { {k: v.shape for k, v in volumes.items()} }.")
    labels = [k for k in present if k in label_keys]
    grey = [k for k in present if k not in label_keys]
    if labels:
        foreground = (volumes[labels[0]] > 0).sum(axis=(0, 1))
        index = int(foreground.argmax()) if foreground.any() else volumes[labels[0]].shape[2] // 2
    else:
        index = volumes[present[0]].shape[2] // 2
    n_classes = max([int(volumes[k].max()) + 1 for k in labels] + [len(class_names or ()), 2])
    # one fixed colour per class index, the same in every panel and in the legend
    colour_scale = max(n_classes - 1, 9)
    background = volumes[grey[0]][..., index] if grey else None

    figure = Figure(figsize=(3 * len(present), 3.6 if labels else 3.2), dpi=80)
    FigureCanvasAgg(figure)
    for i, key in enumerate(present):
        axis = figure.add_subplot(1, len(present), i + 1)
        axis.set_axis_off()
        axis.set_title(f"{key} (slice {index})", fontsize=9)
        if key in label_keys:
            if background is not None:
                axis.imshow(background.T, cmap="gray", origin="lower")
            classes = volumes[key][..., index]
            overlay = np.ma.masked_equal(classes, 0).T
            axis.imshow(overlay, cmap="tab10", vmin=0, vmax=colour_scale, alpha=0.6, origin="lower")
        else:
            axis.imshow(volumes[key][..., index].T, cmap="gray", origin="lower")
    legend = _add_class_legend(figure, n_classes, colour_scale, class_names) if labels else []
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(filepath)
    return legend


class SlicePreviewSaver:
    """Ignite handler saving :func:`save_slice_preview` PNGs of the first cases an engine processes in each run.

    Attach it to a validation evaluator to follow training (one file per case and epoch) or to an inference evaluator
    with ``max_cases=None`` (one file per case).

    Args:
        output_dir: folder for the PNG files.
        keys: keys of the engine output to draw, left to right.
        label_keys: which of ``keys`` are class maps.
        max_cases: cases to save per run; ``None`` saves every case.
        name_pattern: file name, formatted with ``case`` (image file name without extension) and ``epoch``.
        output_transform: maps ``engine.state.output`` to a list of per-case dicts or a batch dict (decollated here).
        class_names: the name of each class index, background first, for the legend of the class maps.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        keys: Sequence[str] = ("image", "label", "pred"),
        label_keys: Sequence[str] = ("label", "pred"),
        max_cases: int | None = 1,
        name_pattern: str = "{case}_epoch{epoch:03d}.png",
        output_transform: Callable[[Any], Any] = lambda output: output,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if max_cases is not None and max_cases < 1:
            raise ValueError(f"max_cases must be positive or None, got {max_cases}.")
        self.output_dir = Path(output_dir)
        self.keys = tuple(keys)
        self.label_keys = tuple(label_keys)
        self.max_cases = max_cases
        self.name_pattern = name_pattern
        self.output_transform = output_transform
        self.class_names = None if class_names is None else tuple(class_names)
        self._saved = 0

    def attach(self, engine: Any) -> None:
        """Save previews after each iteration of ``engine`` and restart the case count when it starts a run."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Any) -> None:
        self._saved = 0

    def __call__(self, engine: Any) -> None:
        items = self.output_transform(engine.state.output)
        if isinstance(items, dict):
            items = decollate_batch(items, detach=True)
        for item in items:
            if self.max_cases is not None and self._saved >= self.max_cases:
                return
            name = self.name_pattern.format(case=case_name(item, self.keys), epoch=engine.state.epoch)
            save_slice_preview(item, self.keys, self.label_keys, self.output_dir / name, self.class_names)
            self._saved += 1
