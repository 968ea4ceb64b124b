"""What the audit found, item by item, and the groups a reviewer reads them in: the bundle's own code, writes, reads,
checkpoint loads, what the allow-list cannot vouch for, what tries what the sandbox stops, and what the sandbox does
not contain."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ext.sharing.allowlist import (
    CHECKED_LOADER,
    WRITERS,
    canonical_name,
    reaches_local_services,
    sandbox_stops,
)
from monai_ext.sharing.expressions import UNKNOWN, Value
from monai_ext.sharing.sandbox.layout import BUNDLE_OUTPUT_FOLDERS, DEFINITION_FOLDERS


@dataclass(frozen=True)
class AuditItem:
    """One thing a bundle would execute.

    Attributes:
        source: the file, relative to the bundle root (e.g. ``configs/train.json``).
        key: where in the file (MONAI id with ``::`` separators, or ``[section] option`` for logging.conf).
        kind: ``expression``, ``import``, ``_target_``, ``macro``, ``path`` (an absolute path in a config),
            ``logging`` or ``module`` (a Python module of the bundle's own that imports could reach).
        text: the expression, target or value as written.
        flags: why the allow-list cannot vouch for it; empty when everything it names resolves to allowed objects.
        resolved: the object a ``_target_`` resolves to, as a qualified name (empty for other kinds).
        group: where a reviewer finds it (a key of :data:`GROUPS`); empty when there is nothing to report.
        detail: what the group is about: the resolved path written or loaded, the code run, why it is not contained.
        paths: the folders it writes into, or the files it loads, where the config gives them (relative to the
            bundle, or absolute).
    """

    source: str
    key: str
    kind: str
    text: str
    flags: tuple[str, ...] = ()
    resolved: str = ""
    group: str = ""
    detail: str = ""
    paths: tuple[str, ...] = ()

    @property
    def contained(self) -> bool:
        """Whether the kernel's rules in ``monai_ext run`` bound what it can do."""
        return self.group != "uncontained"

    @property
    def needs_review(self) -> bool:
        """Whether a person should read it: the bundle's own code, what tries what the sandbox stops, and what the
        sandbox does not contain."""
        return self.group in ("code", "stopped", "uncontained")

    @property
    def fails_strict(self) -> bool:
        """Whether ``audit --strict`` fails on it: hostile intent, contained or not."""
        return self.group in ("stopped", "uncontained")


# Callables that load a checkpoint -> the keyword of the path they load. In a confined run every torch.load
# is weights-only, and a TorchScript archive holds no pickled Python objects.
CHECKPOINT_LOADERS = {
    "torch.serialization.load": "f",
    "torch.jit._serialization.load": "f",
    "monai.handlers.checkpoint_loader.CheckpointLoader": "load_path",
    CHECKED_LOADER: "load_path",
    "monai_ext.sharing.checkpoint.load_checkpoint": "path",
}


# Not covered by the kernel's rules: a UNIX socket may connect to a local service's named socket (seccomp does not see
# the path, and Landlock restricts it only from ABI 9 on), and a debugger reads the user's terminal. Each is decided
# from the objects the config resolves to (allowlist.REACHES_LOCAL_SERVICES), not from its text.
UNCONTAINED_SOCKET = (
    "a UNIX socket can reach a local service (/run/docker.sock, an ssh-agent), which the sandbox does not restrict"
)
UNCONTAINED_MACRO = (
    "a run may write that file, and a later run of the bundle (MONAI's own runner too, unconfined) would read it as "
    "config; monai_ext run refuses it"
)
UNCONTAINED_DEBUGGER = "a debugger stops the run and takes commands from the terminal of whoever runs it"
UNCONTAINED_HANDLER = (
    "a logging handler of another class may write to a local service (SysLogHandler to /dev/log), which the sandbox "
    "does not restrict"
)
GROUPS = {
    "code": ("Runs the bundle's own code", "needs review: it runs confined, but what it computes is only known by "
             "reading it"),
    "writes": ("Writes to", "contained: the sandbox allows only the bundle's output folders and the folders you name"),
    "reads": ("Reads from", "contained: the sandbox allows only the bundle and the folders you name"),
    "checkpoints": ("Loads checkpoints", "contained: every torch.load of a confined run is weights-only"),
    "untyped": ("The allow-list cannot vouch for", "contained: it runs confined like everything else"),
    "stopped": ("Tries what the sandbox stops", "needs review: no bundle needs it, and run any other way it succeeds; "
                "--strict fails on these"),
    "uncontained": ("Not contained by the sandbox", "needs review: --strict fails on these"),
}  # fmt: skip


def replaced(item: AuditItem, **changes: Any) -> AuditItem:
    return dataclasses.replace(item, **changes)


def _own_code(item: AuditItem) -> bool:
    name = item.resolved or item.text.lstrip("$")
    if item.kind == "module" or name.startswith("scripts."):
        return True
    return item.kind in ("import", "expression") and re.search(r"(?<![\w.])scripts\b", item.text) is not None


def grouped(
    item: AuditItem,
    names: Sequence[str] = (),
    writes: Sequence[tuple[str, Value]] = (),
) -> AuditItem:
    """The item with the group a reviewer finds it in (empty: allowed and nothing to report) and its detail."""
    if item.group:
        return item
    local = [name for name in names if reaches_local_services(name)]
    if local:
        return replaced(item, group="uncontained", detail=f"{UNCONTAINED_SOCKET}: {', '.join(dict.fromkeys(local))}")
    tries = _what_it_tries(names)
    if tries:
        return replaced(item, group="stopped", detail="; ".join(f"{what}: {', '.join(n)}" for what, n in tries.items()))
    if _own_code(item):
        return replaced(item, group="code", detail=item.resolved or item.text)
    loaders = [name for name in names if name in CHECKPOINT_LOADERS]
    if loaders:
        return replaced(item, group="checkpoints", detail=f"through {loaders[0]}")
    if writes:
        targets = [target for _, target in writes]
        folders = [_folder(writer, target) for writer, target in writes]
        return replaced(item, group="writes", detail="; ".join(map(where, targets)), paths=known_paths(folders))
    if item.flags:
        return replaced(item, group="untyped")
    return item


def _what_it_tries(names: Sequence[str]) -> dict[str, list[str]]:
    """What of the sandbox's stops the named objects try, each with the most specific names (``subprocess.run``,
    not also ``subprocess``)."""
    found = list(dict.fromkeys(canonical_name(name) for name in names if sandbox_stops(name)))
    specific = [name for name in found if not any(other.startswith(name + ".") for other in found)]
    tries: dict[str, list[str]] = {}
    for name in specific:
        for what in sandbox_stops(name):
            tries.setdefault(what, []).append(name)
    return tries


def _folder(writer: str, target: Value) -> Value:
    """The folder a writer writes into: its path argument, or that path's parent when the argument names a file."""
    keyword = WRITERS[writer][0] if writer in WRITERS else ""
    if keyword.endswith("_dir") or keyword in ("name", "root", "dirname") or not target.known:
        return target
    return Value.of(os.path.dirname(target.obj)) if isinstance(target.obj, str) else UNKNOWN


def known_paths(values: Sequence[Value]) -> tuple[str, ...]:
    return tuple(v.obj for v in values if v.known and isinstance(v.obj, str))


def write_folders(items: Sequence[AuditItem]) -> list[str]:
    """The bundle's top-level folders that the configs write to by a relative path (``./output``, ``@bundle_root +
    '/eval'`` with ``bundle_root`` ".") besides the bundle's definition (``configs``, ``docs``, ``scripts``)."""
    folders = set()
    for item in items:
        for path in item.paths if item.group == "writes" else ():
            parts = Path(os.path.normpath(path)).parts
            if path and not os.path.isabs(path) and parts[0] not in ("..", ".", *DEFINITION_FOLDERS):
                folders.add(parts[0])
    return sorted(folders)


def where(path: Value | str) -> str:
    """A path as a confined run of the bundle would meet it, and what the sandbox says to it."""
    value = path if isinstance(path, str) else (path.obj if path.known and isinstance(path.obj, str) else None)
    if value is None:
        if isinstance(path, Value) and path.provable_path:
            return "a path inside the bundle, known only at run time"
        return "a path known only at run time"
    if os.path.isabs(value) or value.startswith("~"):
        return f"{value} (outside the bundle: a confined run reaches it only when you name it on the command line)"
    relative = os.path.normpath(value)
    top = relative.split(os.sep)[0]
    if top == "..":
        return f"{value} (outside the bundle: the sandbox refuses it)"
    if top in BUNDLE_OUTPUT_FOLDERS:
        return f"BUNDLE/{relative} (an output folder of the bundle)"
    return f"BUNDLE/{relative}" if relative != "." else "BUNDLE"


def format_report(items: list[AuditItem], verbose: bool = False) -> str:
    """A reviewer's report: the findings grouped (:data:`GROUPS`), each with its file, key, text and what it reaches,
    then a summary line. ``verbose`` also lists every item that resolved to allowed objects."""
    lines = [
        "Statuses assume the bundle runs under `python -m monai_ext run` (confined by the kernel); run any other way,",
        "everything below runs with your rights.",
    ]
    for group, (title, status) in GROUPS.items():
        members = [item for item in items if item.group == group]
        if not members:
            continue
        lines += ["", f"{title} ({len(members)}) [{status}]"]
        for item in members:
            resolved = f" -> {item.resolved}" if item.resolved and item.resolved != item.text else ""
            lines.append(f"  {item.source}: {item.key}: {item.text:.160}{resolved}")
            if item.detail and item.detail != item.text:
                lines.append(f"      {item.detail}")
            lines += [f"      why: {flag}" for flag in item.flags]
    if verbose:
        lines += ["", "Resolved to allowed objects:"]
        lines += [f"  {i.source}: {i.key}: {i.text:.160}" + (f" -> {i.resolved}" if i.resolved else "")
                  for i in items if not i.group]  # fmt: skip
    review = {group: sum(item.group == group for item in items) for group in ("code", "stopped", "uncontained")}
    listed = sum(bool(item.group) for item in items)
    lines += [
        "",
        f"{len(items)} items: {len(items) - listed} resolve to allowed objects, {listed} listed above; "
        f"{sum(review.values())} need review ({review['code']} the bundle's own code, {review['stopped']} try what "
        f"the sandbox stops, {review['uncontained']} not contained by the sandbox)",
    ]
    return "\n".join(lines)
