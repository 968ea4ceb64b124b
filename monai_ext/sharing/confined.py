"""Running a received bundle in a child process that the kernel confines before it imports torch or monai.

``monai_ext run`` (:func:`monai_ext.sharing.safe_run.run`) calls :func:`run_confined`: it decides what the run may
read and write, creates the bundle's output folders and a private temporary folder, and starts
``python -I -B -c BOOTSTRAP SPEC`` with no terminal (``/dev/null`` as input, a session of its own, output relayed
through pipes), as a subreaper that kills whatever the run leaves running. The bootstrap loads
:mod:`monai_ext.sharing.capabilities`, :mod:`monai_ext.sharing.landlock` and :mod:`monai_ext.sharing.seccomp` by file
path (so nothing but the standard library is imported), drops every capability, restricts itself, logs what is in
force, and only then imports monai_ext and runs the workflow. Everything the workflow evaluates,
the bundle's own Python files included, runs under these rules:

- read: the Python environment, system libraries and settings (``/usr``, ``/lib*``, a few ``/etc`` files without
  secrets, ``/proc``, ``/sys``), the bundle, and the folders named on the command line;
- write: the bundle's output folders (``models``, ``eval``, ``outputs``, ``dataset``, ``logs``, and any other
  top-level folder but ``configs``, ``docs`` and ``scripts`` that the audit finds the configs writing to, such as
  the Model Zoo's ``output``), the folders given as ``output_dir``, ``ckpt_dir`` or ``log_dir`` overrides, and a
  private temporary folder, the run's ``HOME`` and ``TMPDIR``, deleted afterwards; and ``/dev/shm``, the
  shared-memory folder where Python's multiprocessing locks (MONAI's CacheDataset takes one even without workers)
  and PyTorch's shared tensors live, which a bundle can therefore leave files in until the next reboot; and the
  ``/dev/nvidia*`` device files, where a GPU driver has them;
- no ``execve`` (no shell, no subprocess), no TCP, no signals to outside processes, no device nodes, FIFOs or named
  sockets (see the Landlock module); no capabilities, even as root (see the capabilities module);
- no socket but UNIX ones: no UDP, Multipath TCP, raw or packet sockets, no io_uring; no program started from memory,
  no keyrings, no ``bpf``, no typing into a terminal (see the seccomp module). A UNIX socket may still connect to a
  local service's named socket, which seccomp cannot see and Landlock restricts only from ABI 9 on.

The run's working directory is the bundle root, as the Model Zoo's commands assume (``"bundle_root": "."``, macros
like ``%configs/train.json#x``); it is readable, not writable. An output folder that is a link leading out of the
bundle is refused: the kernel would follow it.
"""

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
import sysconfig
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

__all__ = [
    "BUNDLE_OUTPUT_FOLDERS", "OPTIONAL_OUTPUT_FOLDERS", "WRITABLE_OVERRIDES", "ConfinementError", "definition_changes",
    "run_confined", "sandbox_paths",
]  # fmt: skip

BUNDLE_OUTPUT_FOLDERS = ("models", "eval", "outputs", "dataset", "logs")
# the only other top-level folders a run may write, and only where its configs write there (the Model Zoo's output/):
# never an import name (monai/), a dotfile (.git) or __pycache__, which a later unconfined process would run
OPTIONAL_OUTPUT_FOLDERS = ("output", "runs")
WRITABLE_OVERRIDES = ("output_dir", "ckpt_dir", "log_dir")
_SYSTEM_READABLE = (
    "/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/timezone", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/proc", "/sys", "/dev/null", "/dev/zero",
    "/dev/urandom", "/dev/random",
)  # fmt: skip

_BOOTSTRAP = """
import importlib.util, json, sys
spec = json.loads(sys.argv[1])
def load(name):
    loader = importlib.util.spec_from_file_location("_monai_ext_" + name, spec[name])
    module = sys.modules[loader.name] = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module
capabilities, landlock, seccomp = load("capabilities"), load("landlock"), load("seccomp")
privileges = capabilities.drop_all_capabilities()
protections = landlock.restrict(spec["readable"], spec["writable"], spec["socket_folders"])
try:
    calls = seccomp.restrict_system_calls()
except seccomp.SeccompUnavailableError as err:
    calls = f"UDP, other sockets, programs from memory, keyrings and terminal typing not restricted: {err}"
print("monai_ext run: confined by the kernel.", privileges, *protections.describe(), calls, sep="\\n  ",
      file=sys.stderr, flush=True)
from monai_ext.sharing.safe_run import run_from_child
sys.exit(run_from_child(spec))
"""

# prctl: this process adopts the orphans among its descendants, so none escapes the end of a run by double-forking
_PR_SET_CHILD_SUBREAPER = 36


class ConfinementError(RuntimeError):
    """The run cannot be confined as asked (a link out of the bundle, a missing folder); the message says which."""


def _python_paths() -> list[str]:
    """What the interpreter and the installed packages read: the environment's prefixes, its standard library and
    site-packages, the folders that installed packages put on ``sys.path``, and monai_ext's own package folder.

    Not every ``sys.path`` entry: not the working directory that ``python -m`` adds (it may be the home folder), not
    ``PYTHONPATH`` folders (the child runs with ``-I``, which ignores them), and not the checkout around an editable
    install of monai_ext, with its ``.git``.
    """
    import monai_ext

    package = Path(monai_ext.__file__).resolve().parent
    left_out = {os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(package)]
    paths += [sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    for entry in sys.path:
        if entry and os.path.isabs(entry) and entry not in left_out and not package.is_relative_to(entry):
            paths.append(entry)
    return list(dict.fromkeys(paths))


def sandbox_paths(
    bundle_root: str | os.PathLike,
    overrides: Mapping[str, Any],
    private_tmp: str | os.PathLike,
    output_folders: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The folders a confined run of ``bundle_root`` may read and may write, creating the writable ones.

    Args:
        bundle_root: the bundle folder.
        overrides: the run's ``--key value`` overrides; absolute paths among the values become readable, and those
            of :data:`WRITABLE_OVERRIDES` writable.
        private_tmp: the run's own temporary folder.
        output_folders: the top-level folders of the bundle that its configs write to; those among
            :data:`OPTIONAL_OUTPUT_FOLDERS` (the Model Zoo's ``output``) become writable besides
            :data:`BUNDLE_OUTPUT_FOLDERS`, and no other.

    Returns:
        ``(readable, writable)`` absolute paths.

    Raises:
        ConfinementError: an output folder of the bundle is a link that leads out of it.
        ValueError: an output folder of the bundle is a file.
    """
    root = Path(bundle_root).resolve()
    writable = [str(private_tmp), "/dev/shm"]
    for name in dict.fromkeys([*BUNDLE_OUTPUT_FOLDERS, *(f for f in output_folders if f in OPTIONAL_OUTPUT_FOLDERS)]):
        folder = root / name
        if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(root)):
            raise ConfinementError(f"{folder}: a link out of the bundle; remove it, the kernel would follow it")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: an output folder of the bundle is a file; move it away")
        folder.mkdir(exist_ok=True)
        writable.append(str(folder))
    writable += sorted(glob.glob("/dev/nvidia*"))  # CUDA opens and ioctls these; a rule on a file grants only that file
    readable = [*_SYSTEM_READABLE, *_python_paths(), str(root)]
    for key, value in overrides.items():
        if isinstance(value, str) and os.path.isabs(value):
            if key in WRITABLE_OVERRIDES:
                Path(value).mkdir(parents=True, exist_ok=True)
                writable.append(value)
            else:
                readable.append(value)
    return readable, writable


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
    from monai_ext.sharing.audit import DEFINITION_FOLDERS, module_name

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
        monai_ext.sharing.landlock.LandlockUnavailableError: the kernel cannot confine (checked before anything starts).
    """
    from monai_ext.sharing import capabilities, landlock, seccomp
    from monai_ext.sharing.audit import audit_bundle, write_folders

    landlock.abi_version()
    outside_configs = [f for f in config_file or () if os.path.isabs(f)]
    output_folders = write_folders(audit_bundle(bundle_root, outside_configs))  # read, never evaluated
    private_tmp = tempfile.mkdtemp(prefix="monai_ext_run_")
    try:
        readable, writable = sandbox_paths(bundle_root, overrides, private_tmp, output_folders)
        spec = {
            "capabilities": capabilities.__file__,
            "landlock": landlock.__file__,
            "seccomp": seccomp.__file__,
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
        code = _supervise([sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(spec)], spec["bundle_root"],
                          _child_environment(private_tmp))  # fmt: skip
        changes = definition_changes(Path(spec["bundle_root"]), before)
        for change in changes:
            print(f"monai_ext run: WARNING: {change} (a later unconfined command could run it)", file=sys.stderr)
        return code or (1 if changes else 0)
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)
