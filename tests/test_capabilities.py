"""Dropping every capability, alone in a forked child: what root could do before and cannot after."""

import json
import os
import platform
import shutil
import stat
import subprocess
import sys

import pytest

from monai_ext.sharing.sandbox import capabilities

if platform.system() != "Linux":
    pytest.skip("capabilities are Linux's", allow_module_level=True)


def _in_child(probe):
    """``probe()`` in a forked child; return what it returned (JSON-serialisable)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return json.loads(f.read())


def _powers(folder, tag):
    found = {}
    for name, action in {
        "parent_environment": lambda: open(f"/proc/{os.getppid()}/environ", "rb").read(1),
        "block_device": lambda: os.mknod(folder / f"{tag}_disk", stat.S_IFBLK | 0o600, os.makedev(7, 0)),
    }.items():
        try:
            action()
            found[name] = "allowed"
        except OSError as err:
            found[name] = type(err).__name__
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="root's powers are what the drop takes away; run as root")
def test_root_loses_its_powers_and_every_capability_set_is_empty(tmp_path):
    def probe():
        before = _powers(tmp_path, "before")
        line = capabilities.drop_all_capabilities()
        return {"before": before, "after": _powers(tmp_path, "after"), "sets": capabilities.capability_sets(),
                "line": line}  # fmt: skip

    found = _in_child(probe)
    assert found["before"] == {"parent_environment": "allowed", "block_device": "allowed"}
    assert found["after"] == {"parent_environment": "PermissionError", "block_device": "PermissionError"}
    assert found["sets"] == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)
    assert found["line"] == "no capabilities, not even as root (bounding set emptied); no_new_privs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before_disk"]


def test_capabilities_do_not_come_back_in_a_forked_grandchild():
    def probe():
        capabilities.drop_all_capabilities()
        return _in_child(lambda: capabilities.capability_sets()["CapEff"])

    assert _in_child(probe) == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_as_an_unprivileged_user_root_processes_stay_unreadable_and_own_ones_do_not(tmp_path):
    """The documented gap: dropping capabilities protects processes that hold more (root's); an unprivileged user's
    confined run can still read the environment of that user's other processes."""
    probe = f"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("caps", {capabilities.__file__!r})
caps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(caps)
def read(pid):
    try:
        open(f"/proc/{{pid}}/environ", "rb").read(1)
        return "read"
    except OSError as err:
        return type(err).__name__
read_end, write_end = os.pipe()
if os.fork() == 0:
    caps.drop_all_capabilities()
    os.write(write_end, json.dumps({{"own_parent": read(os.getppid()), "root": read({os.getpid()})}}).encode())
    os._exit(0)
os.close(write_end)
os.wait()
print(os.read(read_end, 1000).decode())
"""
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", probe]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout) == {"own_parent": "read", "root": "PermissionError"}, done.stderr
