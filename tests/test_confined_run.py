"""``monai_ext run`` confined by the kernel: what a received bundle's payload can no longer do, whatever it evaluates.

Each payload runs through the real command line. Whether the allow-list refuses it or it runs, nothing may appear
outside the allowed folders and no program may start (each payload's program would create a file). Skipped where
the kernel has no Landlock.
"""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from bundle_cli import run_cli

from monai_ext.sharing import confined, landlock

try:
    ABI = landlock.abi_version()
except landlock.LandlockUnavailableError as err:
    pytest.skip(f"the kernel cannot confine: {err}", allow_module_level=True)

pytestmark = pytest.mark.slow


def _bundle(root, run, files=None, logging_conf=None):
    (root / "configs").mkdir(parents=True)
    config = {"imports": ["$import os", "$import torch", "$import monai", "$import monai_ext"],
              "bundle_root": "$monai_ext.bundle.paths.bundle_root()", "run": run}  # fmt: skip
    (root / "configs" / "train.json").write_text(json.dumps(config))
    for relative, content in (files or {}).items():
        (root / relative).write_text(content)
    if logging_conf:
        (root / "configs" / "logging.conf").write_text(logging_conf)
    return root


def _outside_is_untouched(outside, before):
    assert sorted(p.name for p in outside.iterdir()) == before, "a file appeared outside the allowed folders"


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "kept.txt").write_text("the lab's file")
    return folder


def test_inside_the_sandbox_writes_outside_fail_and_no_program_starts(tmp_path, outside):
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    private = tmp_path / "private"
    private.mkdir()
    readable, writable = confined.sandbox_paths(bundle, {}, private)
    probe = f"""
import importlib.util, json, os, socket, subprocess, sys
spec = importlib.util.spec_from_file_location("ll", {landlock.__file__!r})
ll = importlib.util.module_from_spec(spec); sys.modules["ll"] = ll; spec.loader.exec_module(ll)
ll.restrict({readable!r}, {writable!r})
found = {{}}
open({str(bundle / "models" / "ok.txt")!r}, "w").write("allowed")
for name, action in {{
    "write_outside": lambda: open({str(outside / "x.txt")!r}, "w"),
    "overwrite_outside": lambda: open({str(outside / "kept.txt")!r}, "w"),
    "write_configs": lambda: open({str(bundle / "configs" / "train.json")!r}, "a"),
    "read_home": lambda: open(os.path.expanduser("~/.bashrc")),
    "subprocess": lambda: subprocess.run(["touch", {str(outside / "y.txt")!r}]),
    "tcp": lambda: socket.create_connection(("127.0.0.1", 9), timeout=2),
}}.items():
    try:
        action()
        found[name] = "allowed"
    except OSError as err:
        found[name] = type(err).__name__
found["os.system"] = os.system("touch {outside / "z.txt"}")
print(json.dumps(found))
"""
    done = subprocess.run([sys.executable, "-I", "-B", "-c", probe], capture_output=True, text=True, timeout=120)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("os.system") != 0
    expected = {"write_outside": "PermissionError", "overwrite_outside": "PermissionError",
                "write_configs": "PermissionError", "subprocess": "PermissionError"}  # fmt: skip
    if ABI >= 4:
        expected["tcp"] = "PermissionError"
    assert {k: v for k, v in found.items() if k in expected} == expected
    assert found["read_home"] in ("PermissionError", "FileNotFoundError")
    assert (bundle / "models" / "ok.txt").read_text() == "allowed"
    assert (outside / "kept.txt").read_text() == "the lab's file"
    _outside_is_untouched(outside, ["kept.txt"])


def _payloads(outside):
    touch = f"touch {outside / 'RAN'}"
    return {
        "reader resolved by MONAI to os.system": {
            "run": [{"_target_": "LoadImaged", "keys": "image", "reader": "os.system", "command": touch}]
        },
        "type lost in a list": {"run": [f"$[os][0].system({touch!r})"]},
        "type lost in a boolean": {"run": [f"$(os or 0).system({touch!r})"]},
        "writer with an absolute path": {
            "run": [f"$monai.data.CSVSaver(output_dir=@bundle_root, filename={str(outside / 'm.csv')!r}).finalize()"]
        },
        "module shadowed by the bundle": {
            "run": [{"_target_": "LoadImaged", "keys": "image", "reader": "ITKReader"}],  # MONAI imports itk
            "files": {"itk.py": f"import os\nos.system({touch!r})\nopen({str(outside / 'itk.txt')!r}, 'w')\n"},
        },
        "logging.conf with a relative file": {
            "run": ["$None"],
            "logging_conf": "[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=\n"
            "[logger_root]\nlevel=INFO\nhandlers=file\n[handler_file]\nclass=FileHandler\nargs=('escape.log',)\n",
        },
        "writer that defaults to the working directory": {"run": [{"_target_": "TensorBoardStatsHandler"}]},
        "callable handed to an allowed caller": {"run": [f"$sorted([{touch!r}], key=os.system)"]},
        "unpickling reader under an allowed prefix": {
            "run": ["$monai.data.NumpyReader(allow_pickle=True).read(@bundle_root + '/payload.npy')"],
            "npy_payload": touch,
        },
    }


@pytest.mark.parametrize("name", list(_payloads(Path("OUT"))))
def test_a_payload_leaves_nothing_outside_and_starts_no_program(name, tmp_path, outside, monkeypatch, capfd):
    payload = _payloads(outside)[name]
    bundle = _bundle(tmp_path / "bundle", payload["run"], payload.get("files"), payload.get("logging_conf"))
    if "npy_payload" in payload:
        np.save(bundle / "payload.npy", np.array([_RunsCommand(payload["npy_payload"])], dtype=object))
    invoking = tmp_path / "cwd"
    invoking.mkdir()
    monkeypatch.chdir(invoking)
    # the confined child exactly as `monai_ext run BUNDLE` starts it, without a second process to parse the command
    confined.run_confined(bundle, None, None, None, (), {})
    assert f"monai_ext run: confined by the kernel.\n  Landlock ABI {ABI}" in capfd.readouterr().err
    _outside_is_untouched(outside, ["kept.txt"])
    assert list(invoking.iterdir()) == [], "nothing may be written to the working directory"


def test_no_tcp_connection_reaches_a_listening_server(tmp_path):
    if ABI < 4:
        pytest.skip(f"Landlock ABI {ABI} does not restrict TCP (4 or later does)")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:  # closed or timed out: nobody connected
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    bundle = _bundle(tmp_path / "bundle", [f"$__import__('socket').create_connection(('127.0.0.1', {port}))"])
    run_cli([bundle, "--allow", "socket,builtins.__import__"], tmp_path, module=("-m", "monai_ext", "run"), check=False)
    thread.join(timeout=1)
    server.close()
    assert accepted == []


def test_an_output_folder_linked_out_of_the_bundle_is_refused(tmp_path, outside):
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    os.symlink(outside, bundle / "eval")
    done = run_cli([bundle], tmp_path, module=("-m", "monai_ext", "run"), check=False)
    assert done.returncode == 1
    assert f"{bundle / 'eval'}: a link out of the bundle" in done.stdout
    _outside_is_untouched(outside, ["kept.txt"])


def test_unconfined_runs_only_when_asked_and_says_so(tmp_path):
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    done = run_cli([bundle, "--unconfined"], tmp_path, module=("-m", "monai_ext", "run"))
    assert "NOT confined by the kernel (--unconfined)" in done.stdout
    assert "confined by the kernel." not in done.stderr


class _RunsCommand:
    """Unpickles into os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _OpensAFile:
    """Unpickles into open(path, 'w'): a write the sandbox allows, so only a weights-only load stops it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_every_torch_load_is_weights_only_even_when_the_config_asks_otherwise(tmp_path):
    import torch

    bundle = _bundle(tmp_path / "bundle", ["$torch.load(@bundle_root + '/p.pt', weights_only=False)"])
    (bundle / "models").mkdir()
    torch.save({"payload": _OpensAFile(bundle / "models" / "UNPICKLED")}, bundle / "p.pt")
    allow = ["--allow", "torch.serialization.load"]
    done = run_cli([bundle, *allow], tmp_path, module=("-m", "monai_ext", "run"), check=False)
    assert done.returncode != 0 and "Weights only load failed" in done.stderr
    assert not (bundle / "models" / "UNPICKLED").exists()
    # the same load outside monai_ext run unpickles the payload
    torch.load(bundle / "p.pt", weights_only=False)
    assert (bundle / "models" / "UNPICKLED").exists()


def test_the_working_directory_on_sys_path_is_not_made_readable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.syspath_prepend(str(home))  # as `python -m monai_ext run` started from the home folder does
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    readable, writable = confined.sandbox_paths(bundle, {}, tmp_path / "private")
    assert str(home) not in readable + writable and str(bundle) in readable
