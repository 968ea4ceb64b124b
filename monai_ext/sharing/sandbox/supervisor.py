"""The parent's side of a confined run: audit the bundle for the folders its configs write to, start the bootstrap
(:mod:`.bootstrap`) with no terminal, relay its output, kill whatever it leaves running, and check afterwards that the
bundle's definition is unchanged."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from monai_ext.sharing.audit import audit_bundle, write_folders
from monai_ext.sharing.sandbox import bootstrap, landlock
from monai_ext.sharing.sandbox.layout import (
    BUNDLE_OUTPUT_FOLDERS,
    DEFINITION_FOLDERS,
    OPTIONAL_OUTPUT_FOLDERS,
    module_name,
)
from monai_ext.sharing.sandbox.rules import ConfinementError, sandbox_paths

__all__ = ["ConfinementError", "definition_changes", "run_confined"]

# prctl: this process adopts the orphans among its descendants, so none escapes the end of a run by double-forking
_PR_SET_CHILD_SUBREAPER = 36


def _child_environment(private_tmp: str) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TZ")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    user = os.environ.get("USER", "monai_ext")
    # caches that libraries write at import (matplotlib, torch hub, XDG) go to the private folder
    env.update(HOME=private_tmp, TMPDIR=private_tmp, XDG_CACHE_HOME=private_tmp, MPLCONFIGDIR=private_tmp)
    env.update(USER=user, LOGNAME=user, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    return env


def _definition_snapshot(root: Path) -> tuple[dict[str, str], set[str]]:
    """SHA-256 of every file of the bundle's definition (configs, scripts, docs, top-level files), and the top-level
    names Python could import from the bundle root."""
    files = [p for p in root.iterdir() if p.is_file()]
    files += [p for folder in DEFINITION_FOLDERS for p in (root / folder).rglob("*") if p.is_file()]
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return hashes, {name for p in root.iterdir() if (name := module_name(p))}


def definition_changes(root: Path, before: tuple[dict[str, str], set[str]]) -> list[str]:
    """What changed in the bundle's definition, or became importable at its top level, since ``before``."""
    hashes, importable = before
    now_hashes, now_importable = _definition_snapshot(root)
    changed = sorted(path for path in hashes.keys() | now_hashes.keys() if hashes.get(path) != now_hashes.get(path))
    found = [f"{root / path} changed" for path in changed]
    return found + [f"{root / name} is now importable as {name!r}" for name in sorted(now_importable - importable)]


def _children(parent: int) -> set[int]:
    """The processes whose parent is ``parent``, from /proc."""
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent:
            found.add(int(stat.split("/")[2]))
    return found


def _kill_left_behind(ours_before: set[int]) -> int:
    """Kill every process the run left (adopted by this subreaper), until none is left; return how many."""
    killed = 0
    while left := _children(os.getpid()) - ours_before:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        killed += len(left)
    return killed


def _relay(source: IO[bytes], destination: TextIO) -> None:
    target = getattr(destination, "buffer", None)
    for chunk in iter(lambda: source.read1(65536), b""):
        if target is not None:
            target.write(chunk)
            target.flush()
        else:
            destination.write(chunk.decode(errors="replace"))
            destination.flush()


def _supervise(command: list[str], cwd: str, env: dict[str, str]) -> int:
    """Start the confined child with no terminal, relay its output, and leave no process of it behind.

    The child reads ``/dev/null`` and runs in a session of its own, so it has no controlling terminal: it cannot type
    into the user's shell (``TIOCSTI``) nor read what the user types. Its output reaches the user through pipes.
    This process is the subreaper of the child's descendants; when the child ends, every process still left is
    killed before anything reports that the run finished.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        ours_before = _children(os.getpid())
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        relays = [
            threading.Thread(target=_relay, args=(child.stdout, sys.stdout), daemon=True),
            threading.Thread(target=_relay, args=(child.stderr, sys.stderr), daemon=True),
        ]
        for relay in relays:
            relay.start()
        code = child.wait()
        killed = _kill_left_behind(ours_before)
        for relay in relays:
            relay.join()
    finally:
        # a caller that goes on (a test, a notebook) must not keep adopting unrelated orphans it never reaps
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    if killed:
        print(f"monai_ext run: killed {killed} process(es) the bundle left running", file=sys.stderr, flush=True)
    return code


def run_confined(
    bundle_root: str | os.PathLike,
    config_file: Sequence[str] | None,
    meta_file: str | None,
    logging_file: str | None,
    allow: Sequence[str],
    overrides: Mapping[str, Any],
) -> int:
    """Run the bundle's workflow in a confined child process (see the module docstring); return its exit code.

    Raises:
        ConfinementError: as :func:`sandbox_paths`.
        monai_ext.sharing.sandbox.landlock.LandlockUnavailableError: the kernel cannot confine (checked before anything
            starts).
    """
    landlock.abi_version()
    outside_configs = [f for f in config_file or () if os.path.isabs(f)]
    output_folders = write_folders(audit_bundle(bundle_root, outside_configs))  # read, never evaluated
    private_tmp = tempfile.mkdtemp(prefix="monai_ext_run_")
    try:
        readable, writable = sandbox_paths(bundle_root, overrides, private_tmp, output_folders)
        spec = {
            "readable": readable,
            "writable": writable,
            "socket_folders": [private_tmp],
            "bundle_root": str(Path(bundle_root).resolve()),
            "config_file": list(config_file) if config_file else None,
            "meta_file": meta_file,
            "logging_file": logging_file,
            "allow": list(allow),
            "overrides": dict(overrides),
        }
        left_out = sorted(set(output_folders) - set(OPTIONAL_OUTPUT_FOLDERS) - set(BUNDLE_OUTPUT_FOLDERS))
        if left_out:
            print(f"monai_ext run: the configs write to {', '.join(f + '/' for f in left_out)}, which is not an "
                  "output folder: not writable", file=sys.stderr, flush=True)  # fmt: skip
        before = _definition_snapshot(Path(spec["bundle_root"]))
        code = _supervise([sys.executable, "-I", "-B", bootstrap.__file__, json.dumps(spec)], spec["bundle_root"],
                          _child_environment(private_tmp))  # fmt: skip
        changes = definition_changes(Path(spec["bundle_root"]), before)
        for change in changes:
            print(f"monai_ext run: WARNING: {change} (a later unconfined command could run it)", file=sys.stderr)
        return code or (1 if changes else 0)
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)
