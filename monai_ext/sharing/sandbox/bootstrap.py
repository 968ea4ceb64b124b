"""The confined child's first code, run as ``python -I -B bootstrap.py SPEC`` by :mod:`.supervisor`.

It loads :mod:`.capabilities`, :mod:`.landlock` and :mod:`.seccomp` by file path, so that nothing but the standard
library is imported before the kernel's rules are in force: it drops every capability, restricts itself, logs what
holds, and only then imports monai_ext to run the workflow (:func:`monai_ext.sharing.safe_run.run_from_child`).
"""

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType


def _load(name: str) -> ModuleType:
    location = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_monai_ext_sandbox_{name}", location)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def confine(spec: dict) -> None:
    """Drop every capability, then restrict files (Landlock) and system calls (seccomp) as ``spec`` says, and log it."""
    capabilities, landlock, seccomp = _load("capabilities"), _load("landlock"), _load("seccomp")
    privileges = capabilities.drop_all_capabilities()
    protections = landlock.restrict(spec["readable"], spec["writable"], spec["socket_folders"])
    try:
        calls = seccomp.restrict_system_calls()
    except seccomp.SeccompUnavailableError as err:
        calls = f"UDP, other sockets, programs from memory, keyrings and terminal typing not restricted: {err}"
    lines = ["monai_ext run: confined by the kernel.", privileges, *protections.describe(), calls]
    print(*lines, sep="\n  ", file=sys.stderr, flush=True)


def main(spec: dict) -> int:
    confine(spec)
    from monai_ext.sharing.safe_run import run_from_child

    return run_from_child(spec)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
