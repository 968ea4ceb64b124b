"""``monai_ext run`` confined by the kernel: what a received bundle's payload can no longer do, whatever it evaluates.

Each payload runs in its own bundle under ``monai_ext run``'s own bootstrap, and a control runs it unconfined to show
its effect. Whether the allow-list refuses it or it runs, nothing may appear outside the allowed folders, nor in
the bundle root (the run's working directory), and no program may start (each payload's program would create a
file). Skipped where the kernel has no Landlock.
"""

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_cli import run_cli

from monai_ext.sharing.sandbox import landlock, rules, supervisor

try:
    ABI = landlock.abi_version()
except landlock.LandlockUnavailableError as err:
    pytest.skip(f"the kernel cannot confine: {err}", allow_module_level=True)

pytestmark = pytest.mark.slow


def _bundle(root, run, files=None, logging_conf=None, config=None):
    (root / "configs").mkdir(parents=True)
    imports = ["$import os", "$import torch", "$import monai", "$import monai_ext", "$import ignite"]
    config = {"imports": imports, "bundle_root": "$monai_ext.bundle.paths.bundle_root()", **(config or {}), "run": run}
    (root / "configs" / "train.json").write_text(json.dumps(config))
    for relative, content in (files or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    if logging_conf:
        (root / "configs" / "logging.conf").write_text(logging_conf)
    return root


# the first lines of a probe that loads monai_ext's Landlock module by path, as the confined run's bootstrap does
_LOAD_LANDLOCK = f"""spec = importlib.util.spec_from_file_location("ll", {landlock.__file__!r})
ll = importlib.util.module_from_spec(spec); sys.modules["ll"] = ll; spec.loader.exec_module(ll)
"""


NOBODY = 65534
# root, as this machine and most containers run; and an unprivileged user, through setpriv where the tests run as root
USERS = [
    "as_started",
    pytest.param("unprivileged", marks=pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to become another user"
    )),
]  # fmt: skip


def _run_probe(probe, user="as_started"):
    """Run a probe script in a fresh isolated interpreter, as ``user``; return the JSON its last line prints."""
    become = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if user == "unprivileged" else []
    done = subprocess.run([*become, sys.executable, "-I", "-B", "-c", probe], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _hand_over(folder, user):
    """Give the probe's user the folder tree it works in, as its own files would be."""
    if user == "unprivileged":
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)


def _outside_is_untouched(outside, before):
    assert sorted(p.name for p in outside.iterdir()) == before, "a file appeared outside the allowed folders"


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "kept.txt").write_text("the lab's file")
    return folder


@pytest.mark.parametrize("user", USERS)
def test_inside_the_sandbox_writes_outside_fail_and_no_program_starts(open_tmp_path, user):
    tmp_path = open_tmp_path
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("the lab's file")
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    private = tmp_path / "private"
    private.mkdir()
    readable, writable = rules.sandbox_paths(bundle, {}, private)
    _hand_over(tmp_path, user)
    probe = f"""
import importlib.util, json, os, socket, subprocess, sys
{_LOAD_LANDLOCK}ll.restrict({readable!r}, {writable!r})
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
    found = _run_probe(probe, user)
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


@pytest.mark.parametrize("user", USERS)
def test_no_device_fifo_or_named_socket_can_be_made_in_a_writable_folder(open_tmp_path, user):
    """As root a bundle made a block device node in models/ and read a disk through it; the same calls before the
    rules are the control. Named sockets only in the private folder, deleted after the run, where DataLoader workers
    need one."""
    tmp_path = open_tmp_path
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    private = tmp_path / "private"
    private.mkdir()
    readable, writable = rules.sandbox_paths(bundle, {}, private)
    _hand_over(tmp_path, user)
    models = bundle / "models"
    probe = f"""
import importlib.util, json, os, socket, stat, sys
{_LOAD_LANDLOCK}LOOP0, PRIVATE = os.makedev(7, 0), {str(private)!r}
def attempts(tag):
    found = {{}}
    for name, action in {{
        "fifo": lambda: os.mkfifo(os.path.join({str(models)!r}, tag + "fifo")),
        "block_device": lambda: os.mknod(os.path.join({str(models)!r}, tag + "disk"), stat.S_IFBLK | 0o600, LOOP0),
        "named_socket": lambda: socket.socket(socket.AF_UNIX).bind(os.path.join({str(models)!r}, tag + "sock")),
        "regular_file": lambda: open(os.path.join({str(models)!r}, tag + "file"), "w").close(),
        "socket_in_the_private_folder": lambda: socket.socket(socket.AF_UNIX).bind(os.path.join(PRIVATE, tag + "s")),
    }}.items():
        try:
            action()
            found[name] = "made"
        except OSError as err:
            found[name] = type(err).__name__
    return found
before = attempts("before_")
ll.restrict({readable!r}, {writable!r}, [{str(private)!r}])
print(json.dumps({{"before": before, "after": attempts("after_")}}))
"""
    found = _run_probe(probe, user)
    kinds = ("fifo", "block_device", "named_socket", "regular_file", "socket_in_the_private_folder")
    if user == "unprivileged":  # no CAP_MKNOD: the kernel refuses device nodes before any rule
        assert found["before"] == {**dict.fromkeys(kinds, "made"), "block_device": "PermissionError"}
    elif os.geteuid() == 0:
        assert found["before"] == dict.fromkeys(kinds, "made")
    denied = "PermissionError"
    assert found["after"] == {"fifo": denied, "block_device": denied, "named_socket": denied, "regular_file": "made",
                              "socket_in_the_private_folder": "made"}  # fmt: skip
    assert sorted(p.name for p in models.iterdir() if p.name.startswith("after_")) == ["after_file"]


# a bundle's own code that types into the terminal it runs in, and leaves a process that writes after the run
_TERMINAL_AND_DAEMON = """
import errno, fcntl, json, os, termios, time

def type_into_the_terminal(root):
    found = {}
    for name, action in {
        "stdin": lambda: fcntl.ioctl(0, termios.TIOCSTI, b"#"),
        "controlling_terminal": lambda: open("/dev/tty", "rb").close(),
    }.items():
        try:
            action()
            found[name] = "done"
        except OSError as err:
            found[name] = errno.errorcode.get(err.errno, str(err.errno))
    with open(os.path.join(root, "models", "terminal.json"), "w") as f:
        json.dump(found, f)

def leave_a_daemon(root):
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    if os.fork():
        os._exit(0)
    os.setsid()
    time.sleep(3)
    with open(os.path.join(root, "models", "late.txt"), "w") as f:
        f.write("written after the run")
    os._exit(0)
"""


def _in_a_terminal(command, cwd):
    """Run ``command`` with a pseudo-terminal as its controlling terminal, stdin and output; return the output."""
    import pty

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    pid, terminal = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvpe(command[0], command, env)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the child's side closes
        while chunk := os.read(terminal, 65536):
            output += chunk
    os.waitpid(pid, 0)
    os.close(terminal)
    return output.decode(errors="replace")


def test_no_typing_into_the_terminal_and_no_process_outlives_the_run(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("from . import payload\n")
    (bundle / "scripts" / "payload.py").write_text(_TERMINAL_AND_DAEMON)
    config = {"imports": ["$import monai_ext", "$import scripts"],
              "bundle_root": "$monai_ext.bundle.paths.bundle_root()",
              "run": ["$scripts.payload.type_into_the_terminal(@bundle_root)",
                      "$scripts.payload.leave_a_daemon(@bundle_root)"]}  # fmt: skip
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    terminal, late = bundle / "models" / "terminal.json", bundle / "models" / "late.txt"

    # the control: MONAI's own runner in a terminal types into it, and the daemon writes after the run has ended
    _in_a_terminal([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"], bundle)
    assert json.loads(terminal.read_text()) == {"stdin": "done", "controlling_terminal": "done"}
    time.sleep(4)
    assert late.read_text() == "written after the run"

    terminal.unlink()
    late.unlink()
    output = _in_a_terminal([sys.executable, "-m", "monai_ext", "run", str(bundle)], tmp_path)
    assert "monai_ext run: confined by the kernel." in output
    found = json.loads(terminal.read_text())
    assert found["stdin"] in ("ENOTTY", "EPERM") and found["controlling_terminal"] in ("EACCES", "ENXIO"), found
    killed = output.index("monai_ext run: killed 1 process(es) the bundle left running")
    assert killed < output.index("finished, confined by the kernel")
    time.sleep(4)
    assert not late.exists(), "a process of the run outlived it"


class _RunsCommand:
    """Unpickles into os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


# a minimal engine that handler payloads attach to, and one case for the savers
_ENGINE = {
    "engine": {"_target_": "ignite.engine.Engine", "process_function": "$lambda engine, batch: batch"},
    "net": {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1},
    "case": "$[{'image': torch.zeros(1, 8, 8, 8), 'label': torch.zeros(1, 8, 8, 8), 'pred': torch.zeros(1, 8, 8, 8)}]",
}
_ATTACH_AND_RUN = ["$@handler.attach(@engine)", "$@engine.run([@case], max_epochs=1)"]
_IMAGE = "$monai.data.MetaTensor(torch.zeros(1, 4, 4, 4), meta={'filename_or_obj': 'case.nii.gz'})"


def _payloads(outside):
    touch = f"touch {outside / 'RAN'}"
    pickled = pickle.dumps(_RunsCommand(touch)).hex()
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
            "run": ["$monai.utils.optional_import('itk')"],  # as MONAI imports optional packages
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
        "reader named after the bundle's own module": {
            "run": [{"_target_": "LoadImaged", "keys": "image", "reader": "scripts.x.Reader"}],
            "files": {
                "scripts/__init__.py": "",
                "scripts/x.py": f"import os\nos.system({touch!r})\nclass Reader:\n  pass\n",
            },
        },
        "checkpoint saver's final file name": {
            "config": {
                **_ENGINE,
                "handler": {
                    "_target_": "monai_ext.sharing.checkpoint.AtomicCheckpointSaver",
                    "save_dir": "$@bundle_root + '/models'",
                    "save_dict": {"net": "@net"},
                    "save_final": True,
                    "final_filename": str(outside / "final.pt"),
                },
            },
            "run": _ATTACH_AND_RUN,
        },  # fmt: skip
        "resumable checkpointer's file prefix": {
            "config": {
                **_ENGINE,
                "handler": {
                    "_target_": "monai_ext.bundle.resume.ResumableCheckpointer",
                    "save_dir": "$@bundle_root + '/models'",
                    "save_dict": {"net": "@net"},
                    "file_prefix": "../../outside/resume",
                },
            },
            "run": _ATTACH_AND_RUN,
        },  # fmt: skip
        "image saver's folder layout": {
            "config": {
                "saver": {
                    "_target_": "SaveImaged",
                    "keys": "image",
                    "folder_layout": {
                        "_target_": "monai.data.FolderLayout",
                        "output_dir": str(outside),
                        "extension": ".nii.gz",
                    },
                }
            },
            "run": [f"$@saver({{'image': {_IMAGE[1:]}}})"],
        },  # fmt: skip
        "image saver without an output folder": {
            "config": {"saver": {"_target_": "SaveImaged", "keys": "image", "separate_folder": False}},
            "run": [f"$@saver({{'image': {_IMAGE[1:]}}})"],
        },
        "preview saver's name pattern": {
            "config": {
                **_ENGINE,
                "handler": {
                    "_target_": "monai_ext.bundle.previews.SlicePreviewSaver",
                    "output_dir": "$@bundle_root + '/eval'",
                    "name_pattern": str(outside / "{case}.png"),
                },
            },
            "run": _ATTACH_AND_RUN,
        },  # fmt: skip
        "log file handler": {
            "config": {**_ENGINE, "handler": {"_target_": "LogfileHandler", "output_dir": str(outside)}},
            "run": _ATTACH_AND_RUN,
        },
        "torch's pickle decoder": {
            "run": [f"$torch.utils.data.datapipes.utils.decoder.basichandlers('pickle', bytes.fromhex('{pickled}'))"]
        },
        "callable carried by map": {"run": [f"$list(map(os.system, [{touch!r}]))"]},
        "program started from memory": {
            "run": [
                "$os.write(@memfd, open('/usr/bin/touch', 'rb').read())",
                "$os.waitpid(os.posix_spawn('/proc/self/fd/' + str(@memfd), @touch, {}), 0)",
            ],
            "config": {"memfd": "$os.memfd_create('payload')", "touch": ["touch", str(outside / "RAN")]},
        },
        "callable carried by a Dataset transform": {
            "config": {"dataset": {"_target_": "Dataset", "data": [touch], "transform": "$os.system"}},
            "run": ["$@dataset[0]"],
        },
        "callable carried by worker_init_fn": {
            "run": [f"$list(monai.data.DataLoader([0], num_workers=1, worker_init_fn=lambda i: os.system({touch!r})))"]
        },
        "callable carried by add_event_handler": {
            "config": _ENGINE,
            "run": [
                f"$@engine.add_event_handler(ignite.engine.Events.STARTED, lambda e: os.system({touch!r}))",
                "$@engine.run([0], max_epochs=1)",
            ],
        },  # fmt: skip
    }


def _payload_bundle(root, payload):
    """A bundle carrying one payload of :func:`_payloads`, with its files, logging.conf and pickled array."""
    bundle = _bundle(root, payload["run"], payload.get("files"), payload.get("logging_conf"), payload.get("config"))
    if "npy_payload" in payload:
        np.save(bundle / "payload.npy", np.array([_RunsCommand(payload["npy_payload"])], dtype=object))
    return bundle


# payload -> what it leaves outside when nothing confines it (the bundle's folder is the working directory)
UNCONFINED_EFFECT = {
    "reader resolved by MONAI to os.system": "RAN",
    "type lost in a list": "RAN",
    "type lost in a boolean": "RAN",
    "writer with an absolute path": "m.csv",
    "callable handed to an allowed caller": "RAN",
    "unpickling reader under an allowed prefix": "RAN",
    "reader named after the bundle's own module": "RAN",
    "checkpoint saver's final file name": "final.pt",
    "resumable checkpointer's file prefix": "resume_net_epoch=1.pt",
    "image saver's folder layout": "case.nii.gz",
    "preview saver's name pattern": "case.png",
    "log file handler": "log.txt",
    "torch's pickle decoder": "RAN",
    "callable carried by map": "RAN",
    "program started from memory": "RAN",
    "callable carried by a Dataset transform": "RAN",
    "callable carried by worker_init_fn": "RAN",
    "callable carried by add_event_handler": "RAN",
}


@pytest.mark.parametrize("name", sorted(UNCONFINED_EFFECT))
@pytest.mark.filterwarnings("ignore:Preferably the reader should inherit ImageReader")  # the payloads' readers
def test_each_payload_works_when_nothing_confines_it(name, tmp_path, outside, monkeypatch):
    # the control for the test below: the same bundle, run in this process with the allow-list only reporting
    from monai_ext.sharing.safe_run import run_bundle

    payload = _payloads(outside)[name]
    bundle = _payload_bundle(tmp_path / "bundle", payload)
    monkeypatch.chdir(bundle)
    monkeypatch.syspath_prepend(str(bundle))
    run_bundle(bundle, logging_file=False, advisory=True)
    assert UNCONFINED_EFFECT[name] in [p.name for p in outside.iterdir()]


# the bootstrap's confinement, then one fork per payload bundle, each running it as the confined child would
_FORK_EACH_RUN = """
import importlib.util, json, os, sys, traceback
spec = json.loads(sys.argv[1])
loader = importlib.util.spec_from_file_location("bootstrap", spec["bootstrap"])
bootstrap = importlib.util.module_from_spec(loader)
loader.loader.exec_module(bootstrap)
bootstrap.confine(spec)
from monai_ext.sharing.safe_run import run_from_child
codes = {}
for name, run in spec["runs"].items():
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(run["bundle_root"])
            code = run_from_child(run)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def payloads_run_confined(tmp_path_factory):
    """Every payload, each in its own bundle with its own folder outside, run confined by ``monai_ext run``'s own
    bootstrap. It confines one process, which forks a run per bundle: the kernel's rules pass to every fork, and torch
    and MONAI are imported once instead of once per payload (about 5 s each). The rules are the union of what each
    bundle's run may read and write; no payload's outside folder is among them."""
    from monai_ext.sharing.audit import audit_bundle, write_folders
    from monai_ext.sharing.sandbox import bootstrap

    root = tmp_path_factory.mktemp("payloads")
    private, invoking = root / "private", root / "cwd"
    private.mkdir()
    invoking.mkdir()
    readable, writable, runs, outsides, tops = {}, {}, {}, {}, {}
    for number, name in enumerate(_payloads(Path("OUT"))):
        outsides[name] = root / str(number) / "outside"
        outsides[name].mkdir(parents=True)
        (outsides[name] / "kept.txt").write_text("the lab's file")
        payload = _payloads(outsides[name])[name]
        bundle = _payload_bundle(root / str(number) / "bundle", payload)
        may_read, may_write = rules.sandbox_paths(bundle, {}, private, write_folders(audit_bundle(bundle)))
        readable.update(dict.fromkeys(may_read))
        writable.update(dict.fromkeys(may_write))
        tops[name] = sorted(p.name for p in bundle.iterdir())
        runs[name] = {"bundle_root": str(bundle.resolve()), "config_file": None, "meta_file": None,
                      "logging_file": None, "allow": [], "overrides": {}}  # fmt: skip
    spec = {"bootstrap": bootstrap.__file__, "readable": list(readable), "writable": list(writable),
            "socket_folders": [str(private)], "runs": runs}  # fmt: skip
    command = [sys.executable, "-I", "-B", "-c", _FORK_EACH_RUN, json.dumps(spec)]
    environment = supervisor._child_environment(str(private))
    done = subprocess.run(command, cwd=invoking, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, outsides, invoking, tops


@pytest.mark.parametrize("name", list(_payloads(Path("OUT"))))
def test_a_payload_leaves_nothing_outside_and_starts_no_program(name, payloads_run_confined):
    codes, err, outsides, invoking, tops = payloads_run_confined
    privileges = "no capabilities, not even as root" if os.geteuid() == 0 else "no capabilities"
    assert f"monai_ext run: confined by the kernel.\n  {privileges}" in err and f"\n  Landlock ABI {ABI}" in err
    assert "no sockets but UNIX ones (seccomp)" in err
    assert name in codes, "the payload ran in a fork of the confined process"
    _outside_is_untouched(outsides[name], ["kept.txt"])
    assert list(invoking.iterdir()) == [], "nothing may be written to the invoking working directory"
    bundle = outsides[name].parent / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == tops[name], "the run's working directory, the bundle root"


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


def _reaches_the_listener_only_unconfined(tmp_path, monkeypatch, capfd, payload, receive):
    """Run a bundle whose ``run`` is ``payload`` unconfined, then confined. Return what ``receive(timeout)`` got from
    the unconfined run, and check that the confined run was refused and nothing reached the listener from it."""
    from monai_ext.sharing.safe_run import run_bundle

    unconfined = _bundle(tmp_path / "unconfined", [payload])
    monkeypatch.chdir(unconfined)
    run_bundle(unconfined, logging_file=False, advisory=True)
    received = receive(5)

    monkeypatch.chdir(tmp_path)
    code = supervisor.run_confined(_bundle(tmp_path / "confined", [payload]), None, None, None, (), {})
    err = capfd.readouterr().err
    assert code != 0 and "no sockets but UNIX ones (seccomp)" in err and "PermissionError: [Errno 13]" in err
    with pytest.raises(TimeoutError):
        receive(1)
    return received


def test_a_udp_datagram_leaves_an_unconfined_run_and_none_leaves_a_confined_one(tmp_path, monkeypatch, capfd):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))

        def receive(timeout):
            receiver.settimeout(timeout)
            return receiver.recv(64)

        send = f"$__import__('socket').socket(2, 2).sendto(b'lab data', ('127.0.0.1', {receiver.getsockname()[1]}))"
        assert _reaches_the_listener_only_unconfined(tmp_path, monkeypatch, capfd, send, receive) == b"lab data"


def test_a_multipath_tcp_connection_which_landlock_lets_through_is_refused_by_the_filter(tmp_path, monkeypatch, capfd):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
    except OSError as err:
        pytest.skip(f"this kernel has no Multipath TCP: {err}")
    with socket.create_server(("127.0.0.1", 0)) as server:

        def accept(timeout):
            server.settimeout(timeout)
            connection, _ = server.accept()
            connection.close()
            return "connected"

        mptcp = f"$__import__('socket').socket(2, 1, 262).connect(('127.0.0.1', {server.getsockname()[1]}))"
        assert _reaches_the_listener_only_unconfined(tmp_path, monkeypatch, capfd, mptcp, accept) == "connected"


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
    readable, writable = rules.sandbox_paths(bundle, {}, tmp_path / "private")
    assert str(home) not in readable + writable and str(bundle) in readable


def test_a_signed_archive_with_a_module_named_itk_is_held_back_then_runs_confined(tmp_path, outside, capfd):
    import hashlib
    import zipfile

    from monai_ext.sharing import signing
    from monai_ext.sharing.exchange import unpack
    from monai_ext.sharing.packaging import PACKAGE_MANIFEST, pack_bundle

    signing.keygen(str(tmp_path / "lab.key"), str(tmp_path / "lab.pub"))
    # MONAI imports optional packages by name; with no itk installed, the name reaches the bundle's file
    bundle = _bundle(tmp_path / "bundle", ["$monai.utils.optional_import('itk')"])
    pack_bundle(bundle, tmp_path / "plain.zip")
    with zipfile.ZipFile(tmp_path / "plain.zip") as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    # the sending lab signs an archive that holds itk.py: the signature says who sent it, not that it is harmless
    ran = "open(os.path.join(os.path.dirname(__file__), 'models', 'itk_ran.txt'), 'w')"
    entries["itk.py"] = (
        f"import os\n{ran}\nos.system('touch {outside / 'RAN'}')\nopen('{outside / 'x'}', 'w')\n".encode()
    )
    manifest = json.loads(entries[PACKAGE_MANIFEST])
    manifest["files"]["itk.py"] = hashlib.sha256(entries["itk.py"]).hexdigest()
    entries[PACKAGE_MANIFEST] = json.dumps(manifest, indent=1).encode()
    entries[signing.SIGNATURE_FILE] = signing.sign(entries[PACKAGE_MANIFEST], tmp_path / "lab.key")
    with zipfile.ZipFile(tmp_path / "signed.zip", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)

    with pytest.raises(SystemExit):
        unpack(str(tmp_path / "signed.zip"), str(tmp_path / "held"), trust=str(tmp_path / "lab.pub"))
    # the optional_import (a name the audit cannot resolve without running it) and itk.py each need a word
    assert "--accept configs/train.json:run::0,itk.py:itk" in capfd.readouterr().out
    assert not (tmp_path / "held").exists()
    report = unpack(str(tmp_path / "signed.zip"), str(tmp_path / "received"), trust=str(tmp_path / "lab.pub"),
                    accept="configs/train.json:run::0,itk.py:itk")  # fmt: skip
    assert "signature: valid, signed by the trusted key" in report
    supervisor.run_confined(tmp_path / "received", None, None, None, (), {})
    assert (tmp_path / "received" / "models" / "itk_ran.txt").exists(), "MONAI's import of itk ran the bundle's file"
    _outside_is_untouched(outside, ["kept.txt"])


def test_only_output_folders_are_writable_whatever_the_configs_write_to(tmp_path):
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    private = tmp_path / "private"
    private.mkdir()
    configs_write_to = ["monai", ".git", "__pycache__", "output", "runs"]
    _, writable = rules.sandbox_paths(bundle, {}, private, configs_write_to)
    top = {Path(path).name for path in writable if Path(path).parent == bundle.resolve()}
    assert top == {"models", "eval", "outputs", "dataset", "logs", "output", "runs"}
    assert not any((bundle / name).exists() for name in ("monai", ".git", "__pycache__"))


def test_a_run_that_makes_an_output_folder_importable_is_reported_and_fails(tmp_path):
    """A package planted in models/ (an allowed folder) is what a later `python -m ...` from the bundle imports."""
    plant = "$open(@bundle_root + '/models/__init__.py', 'w').write('open(\"PLANTED_RAN\", \"w\")')"
    bundle = _bundle(tmp_path / "bundle", [plant])
    (bundle / "models").mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    # the control: unconfined, the plant is written, and an import from the bundle folder runs it
    run_cli(["run", "--config_file", "configs/train.json"], bundle)
    subprocess.run([sys.executable, "-c", "import models"], cwd=bundle, env=env, check=True)
    assert (bundle / "PLANTED_RAN").exists()
    (bundle / "PLANTED_RAN").unlink()
    (bundle / "models" / "__init__.py").unlink()

    done = run_cli([bundle], tmp_path, module=("-m", "monai_ext", "run"), check=False)
    assert done.returncode == 1
    assert f"monai_ext run: WARNING: {bundle.resolve() / 'models'} is now importable as 'models'" in done.stderr


def test_pythonpath_folders_and_the_checkout_around_monai_ext_are_not_readable(tmp_path, monkeypatch):
    """Every sys.path entry was readable: a PYTHONPATH=$HOME/lib folder, and the checkout of an editable install with
    its .git. The same reads before the rules are the control."""
    import monai_ext

    checkout_git = Path(monai_ext.__file__).resolve().parents[1] / ".git" / "HEAD"
    if not checkout_git.is_file():
        pytest.skip(f"monai_ext is not used from a git checkout here ({checkout_git} is missing)")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "token.txt").write_text("a cloud token")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    monkeypatch.syspath_prepend(str(lib))
    bundle = _bundle(tmp_path / "bundle", ["$None"])
    private = tmp_path / "private"
    private.mkdir()
    readable, writable = rules.sandbox_paths(bundle, {}, private)
    probe = f"""
import importlib.util, json, sys
{_LOAD_LANDLOCK}def attempts():
    found = {{}}
    for name, path in {{"pythonpath": {str(lib / "token.txt")!r}, "checkout_git": {str(checkout_git)!r},
                        "monai_ext": {monai_ext.__file__!r}}}.items():
        try:
            open(path).read(1)
            found[name] = "read"
        except OSError as err:
            found[name] = type(err).__name__
    return found
before = attempts()
ll.restrict({readable!r}, {writable!r})
print(json.dumps({{"before": before, "after": attempts()}}))
"""
    found = _run_probe(probe)
    assert found["before"] == {"pythonpath": "read", "checkout_git": "read", "monai_ext": "read"}
    assert found["after"] == {"pythonpath": "PermissionError", "checkout_git": "PermissionError", "monai_ext": "read"}
