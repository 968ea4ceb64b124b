"""Reading checkpoints safely and reporting every key problem at once.

Shared by all converters in :mod:`monai_ext.legacy`: files are read with ``torch.load(weights_only=True)`` so a
checkpoint cannot run code, common wrappers are unwrapped, and the caller's mapping is never modified.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LegacyCheckpointError",
    "check_state_dict_keys",
    "load_weights_only",
    "only_builtin_safe_globals",
    "read_state_dict",
]

# Keys under which training scripts commonly nest the weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "network", "model_state_dict")


@contextlib.contextmanager
def only_builtin_safe_globals() -> Iterator[None]:
    """Within the block, weights-only loads accept only PyTorch's built-in allow-list of types.

    ``torch.serialization.add_safe_globals`` lets any code in the process, a bundle config included, extend what a
    weights-only load may call; a crafted file can then run those callables. Weights need none of them, so the
    registry is emptied for the block and restored afterwards.
    """
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(registered)


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` under :func:`only_builtin_safe_globals`.

    Raises:
        pickle.UnpicklingError: the file holds objects beyond tensors and plain containers.
    """
    with only_builtin_safe_globals():
        return torch.load(path, map_location=map_location, weights_only=True)


class LegacyCheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into; the message lists every offending key."""


def read_state_dict(source: str | os.PathLike | Mapping, name: str | None = None) -> dict[str, torch.Tensor]:
    """Return a new flat ``{key: tensor}`` dict from a checkpoint file or mapping.

    Args:
        source: path of a file written by ``torch.save``, or an already loaded mapping.
        name: how to refer to the checkpoint in error messages; defaults to the path, or "checkpoint".

    Returns:
        A new dict (the input is never modified) with ``state_dict``/``model``/``network`` wrappers removed and any
        ``module.`` prefix (from DataParallel/DistributedDataParallel) stripped from every key.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        LegacyCheckpointError: the file holds pickled objects other than tensors (``weights_only=True`` refuses to
            run their code), or no mapping of tensors was found.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            loaded = load_weights_only(path)
        except pickle.UnpicklingError as err:
            raise LegacyCheckpointError(
                f"{name}: refused to load, it holds pickled Python objects besides tensors and plain containers, "
                f"and loading them could run arbitrary code. Re-save only the state dict "
                f"(torch.save(model.state_dict(), path)). Details: {str(err).splitlines()[0]}"
            ) from err
    elif isinstance(source, Mapping):
        loaded = source
        name = name or "checkpoint"
    else:
        raise TypeError(f"expected a checkpoint path or a mapping of tensors, got {type(source).__name__}")

    for wrapper in WRAPPER_KEYS:
        inner = loaded.get(wrapper) if isinstance(loaded, Mapping) else None
        if isinstance(inner, Mapping):
            loaded = inner
            break
    if not isinstance(loaded, Mapping):
        raise LegacyCheckpointError(f"{name}: expected a mapping of parameter names to tensors, got {type(loaded)}")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise LegacyCheckpointError(
            f"{name}: expected a flat mapping of parameter names to tensors; these keys hold something else "
            f"(nested or wrapped checkpoint?): {sorted(map(str, not_tensors))[:20]}"
        )
    if loaded and all(key.startswith("module.") for key in loaded):
        return {key[len("module.") :]: value for key, value in loaded.items()}
    return dict(loaded)


def check_state_dict_keys(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, torch.Tensor],
    name: str = "checkpoint",
    hint: str = "",
) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped key.

    Args:
        expected: key -> shape the model needs.
        found: key -> tensor the (converted) checkpoint provides.
        name: how to refer to the checkpoint in the message.
        hint: an extra sentence appended to the message, e.g. which constructor flag to change.

    Raises:
        LegacyCheckpointError: when any key is missing, unexpected or has the wrong shape.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(found[key].shape)}, model {tuple(expected[key])}"
        for key in set(expected) & set(found)
        if tuple(found[key].shape) != tuple(expected[key])
    )
    if not (missing or unexpected or mis_shaped):
        return
    lines = [f"{name} does not fit the model:"]
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mis_shaped)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
    if hint:
        lines.append(hint)
    raise LegacyCheckpointError("\n".join(lines))
