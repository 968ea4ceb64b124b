import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monai_ext.sharing.audit import audit, audit_bundle, format_report

BUNDLES_DIR = Path(__file__).parents[1] / "bundles"
REPO_BUNDLES = sorted(p.parents[1] for p in BUNDLES_DIR.glob("*/configs/metadata.json"))

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

TRAIN = {
    "imports": ["$import glob", "$import os", "$import monai_ext"],
    "bundle_root": ".",
    "output_dir": "$os.path.join(@bundle_root, 'eval')",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16],
        "strides": [2],
    },
    "network": "$@network_def.to(@device)",
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-3},
    "files": "$sorted(glob.glob(@bundle_root + '/dataset/imagesTr/*.nii.gz'))",
    "datalist": "$[{'image': f} for f in @files]",
    "checked": "$monai_ext.bundle.data_check.checked_datalist(@datalist, num_classes=2)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": ["image"]},
            {"_target_": "ScaleIntensityd", "keys": "image"},
        ],
    },
    "ckpt": "$monai_ext.sharing.checkpoint.load_checkpoint(@bundle_root + '/models/model.pt')",
    "shared": "%configs/common.json#roi",
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@network.train()"],
}

# key -> (value, expected flag text). Each is inserted into a copy of the clean train.json.
DANGEROUS = {
    "shell": ("$os.system('touch EXECUTED')", "os.system: posix.system is not on the allow-list"),
    "process": ("$subprocess.run(['ls'])", "subprocess: not defined by any import of the bundle"),
    "evaluate": ("$eval('1 + 1')", "eval: builtins.eval is not an allowed builtin"),
    "execute": ("$exec('x = 1')", "exec: builtins.exec is not an allowed builtin"),
    "dynamic_import": ("$__import__('os').getcwd()", "__import__: names starting with _ are refused"),
    "network_socket": ("$socket.create_connection(('example.org', 80))", "socket: not defined by any import"),
    "local_service": (
        "$multiprocessing.connection.Client('/run/docker.sock')",
        "multiprocessing: not defined by any import",
    ),
    "network_url": ("$urllib.request.urlopen('http://example.org')", "urllib: not defined by any import"),
    "download": (
        "$monai.apps.download_url('http://example.org/w.pt', 'w.pt')",
        "monai.apps.download_url: monai.apps.utils.download_url is not on the allow-list",
    ),
    "write_absolute": ("$open('/etc/cron.d/job', 'w')", "open: builtins.open is not an allowed builtin"),
    "write_parent": ("$os.makedirs('../../outside')", "os.makedirs writes to a path not provably inside the bundle"),
    "write_path": ("$pathlib.Path('/tmp/x').write_text('x')", "pathlib: not defined by any import of the bundle"),
    "delete_tree": ("$shutil.rmtree(@bundle_root)", "shutil: not defined by any import of the bundle"),
    "delete_file": (
        "$os.remove(@bundle_root + '/models/model.pt')",
        "os.remove: posix.remove is not on the allow-list",
    ),
    "unsafe_load": (
        "$torch.load(@bundle_root + '/models/model.pt')",
        "torch.load: torch.serialization.load is not on the allow-list",
    ),
    "unhashed_load": (
        "$torch.load(@bundle_root + '/models/model.pt', weights_only=True)",
        "torch.load: torch.serialization.load is not on the allow-list",
    ),
    "safe_globals": (
        "$torch.serialization.add_safe_globals([monai.utils.run_cmd])",
        "torch.serialization.add_safe_globals is not on the allow-list",
    ),
    "dunder": ("$().__class__.__base__.__subclasses__()", "attributes starting with _ are refused"),
    "lambda": ("$lambda x: x / x.max()", "x.max(...): calls an object of unknown type"),
    "lambda_rebinds": ("$(lambda exec: exec)(print)", "lambda parameter 'exec' rebinds a name"),
    "setattr_elsewhere": ("$setattr(os, 'system', print)", "only setattr(torch.backends.<module>, 'name', value)"),
    "setattr_passed": ("$list(map(setattr, [os], ['sep'], ['x']))", "builtins.setattr is not an allowed builtin"),
    "pickled_cache": (
        {"_target_": "PersistentDataset", "data": [], "cache_dir": "cache", "weights_only": False},
        "weights_only must stay true",
    ),
    "unknown_call": ("$@files.pop()", "calls an object of unknown type"),
    "target_process": ({"_target_": "subprocess.Popen", "args": ["ls"]}, "subprocess.Popen lies outside"),
    "target_exec": ({"_target_": "builtins.exec", "source": "x = 1"}, "builtins.exec lies outside"),
    "target_beyond": ({"_target_": "sklearn.svm.SVC"}, "sklearn.svm.SVC lies outside the importable packages"),
    "outside_macro": ("%../../elsewhere/configs/x.json#roi", "pulls config from '../../elsewhere/configs/x.json'"),
    "debugger": ({"_target_": "torch.nn.Identity", "_mode_": "debug"}, "'debug' opens a debugger"),
    "debugged_loader": (
        {"_target_": "CheckpointLoader", "load_path": "m.pt", "load_dict": {}, "_mode_": "debug"},
        "'debug' opens a debugger",
    ),
    "partial_mode": ({"_target_": "torch.nn.Identity", "_mode_": "partial"}, "_mode_ 'partial' is refused"),
    "target_short_builtin": ({"_target_": "eval", "source": "1"}, "short _target_ 'eval' is no MONAI component"),
    "target_short_ambiguous": ({"_target_": "SABlock", "hidden_size": 8, "num_heads": 2}, "'SABlock' is ambiguous"),
}
DANGEROUS_IMPORTS = {
    "$import subprocess": "import of subprocess: not on the allow-list",
    "$import socket": "import of socket: not on the allow-list",
    "$import urllib.request": "import of urllib.request: not on the allow-list",
    "$import shutil": "import of shutil: not on the allow-list",
    "$import pathlib": "import of pathlib: not on the allow-list",
}
DANGEROUS_LOGGING = """
[handler_remote]
class=handlers.SocketHandler
args=('example.org', 9020)

[handler_file]
class=FileHandler
args=('/var/log/bundle.log', 'a')
"""


def _make_bundle(root: Path, train: dict, logging_conf: str = LOGGING_CONF) -> Path:
    configs = root / "configs"
    configs.mkdir(parents=True)
    (configs / "train.json").write_text(json.dumps(train, indent=1))
    (configs / "common.json").write_text(json.dumps({"roi": [16, 16, 16]}))
    (configs / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "clean"}))
    (configs / "logging.conf").write_text(logging_conf)
    return root


@pytest.fixture
def clean_bundle(tmp_path):
    return _make_bundle(tmp_path / "clean", TRAIN)


@pytest.fixture
def doctored_bundle(tmp_path):
    train = json.loads(json.dumps(TRAIN))
    train["imports"] += list(DANGEROUS_IMPORTS)
    train.update({key: value for key, (value, _) in DANGEROUS.items()})
    return _make_bundle(tmp_path / "doctored", train, LOGGING_CONF + DANGEROUS_LOGGING)


def test_clean_bundle_lists_everything_and_flags_nothing(clean_bundle):
    items = audit_bundle(clean_bundle)
    assert [item for item in items if item.flags] == []
    listed = {(item.source, item.key, item.kind) for item in items}
    expected = {
        ("configs/train.json", "imports::2", "import"),
        ("configs/train.json", "device", "expression"),
        ("configs/train.json", "network_def::_target_", "_target_"),
        ("configs/train.json", "preprocessing::transforms::1::_target_", "_target_"),
        ("configs/train.json", "initialize::0", "expression"),
        ("configs/train.json", "shared", "macro"),
        ("configs/logging.conf", "[handler_consoleHandler] class", "logging"),
        ("configs/logging.conf", "[handler_consoleHandler] args", "logging"),
    }
    assert expected <= listed
    expressions = sum(isinstance(v, str) and v.startswith("$") for v in json.dumps(TRAIN).split('"'))
    assert sum(item.kind in ("expression", "import") for item in items) == expressions
    report = format_report(items)
    assert report.endswith(
        f"{len(items)} items: {len(items) - 1} resolve to allowed objects, 1 listed above; 0 need review "
        "(0 the bundle's own code, 0 try what the sandbox stops, 0 not contained by the sandbox)"
    )
    assert "Loads checkpoints (1) [contained: every torch.load of a confined run is weights-only]" in report
    assert "  configs/train.json: ckpt: $monai_ext.sharing.checkpoint.load_checkpoint(@bundle_root + " in report
    resolved = {item.key: item.resolved for item in items if item.kind == "_target_"}
    assert resolved["preprocessing::transforms::1::_target_"] == "monai.transforms.intensity.dictionary.ScaleIntensityd"


def test_every_dangerous_expression_is_flagged_naming_file_and_key(doctored_bundle):
    items = audit_bundle(doctored_bundle)
    flags = {(item.source, item.key): " | ".join(item.flags) for item in items}
    for key, (value, expected) in DANGEROUS.items():
        full_key = f"{key}::_target_" if isinstance(value, dict) else key
        assert expected in flags[("configs/train.json", full_key)], key
    imports = {item.text: " | ".join(item.flags) for item in items if item.kind == "import"}
    for line, expected in DANGEROUS_IMPORTS.items():
        assert (expected or "") in imports[line] and bool(imports[line]) == bool(expected), line
    assert (
        "class 'handlers.SocketHandler' is not one of the accepted handlers"
        in (flags[("configs/logging.conf", "[handler_remote] class")])
    )
    assert (
        "writes to '/var/log/bundle.log', outside the bundle root"
        in (flags[("configs/logging.conf", "[handler_file] args")])
    )
    # untouched entries of the clean config stay unflagged
    assert flags[("configs/train.json", "network_def::_target_")] == ""


# key -> the group a reviewer finds it in: what the sandbox contains, what it stops (and a bundle has no use for), and
# what it does not contain (sockets, a debugger)
GROUPS = {
    "shell": "stopped",
    "write_absolute": "stopped",
    "process": "stopped",
    "dynamic_import": "stopped",
    "target_exec::_target_": "stopped",
    "imports::3": "stopped",  # import subprocess
    "lambda": "untyped",
    "write_parent": "writes",
    "unsafe_load": "checkpoints",
    "unhashed_load": "checkpoints",
    "network_socket": "uncontained",
    "local_service": "uncontained",
    "debugger::_target_": "uncontained",
    "debugged_loader::_target_": "uncontained",  # a debugger before a checkpoint load
    "partial_mode::_target_": "untyped",  # refused, and contained: its reason names the debugger mode, it is not one
    "[handler_remote] class": "uncontained",
    "[handler_file] args": "writes",
    "ckpt": "checkpoints",
    "network_def::_target_": "",
}


def test_findings_are_grouped_for_a_reviewer_and_say_what_the_sandbox_contains(doctored_bundle):
    items = audit_bundle(doctored_bundle)
    groups = {item.key: item.group for item in items}
    assert {key: groups[key] for key in GROUPS} == GROUPS
    assert {item.key for item in items if not item.contained} == {
        "network_socket", "local_service", "debugger::_target_", "debugged_loader::_target_",
        "[handler_remote] class", "imports::4",
    }, "the socket import and expression, multiprocessing's Client, two debuggers and the socket handler"  # fmt: skip
    report = format_report(items)
    lines = report.splitlines()
    assert "Not contained by the sandbox (6) [needs review: --strict fails on these]" in lines
    assert "  configs/train.json: shell: $os.system('touch EXECUTED')" in lines
    assert "      why: os.system: posix.system is not on the allow-list" in lines
    write_parent = lines.index("  configs/train.json: write_parent: $os.makedirs('../../outside')")
    assert lines[write_parent + 1] == "      ../../outside (outside the bundle: the sandbox refuses it)"
    assert (
        "Tries what the sandbox stops (18) [needs review: no bundle needs it, and run any other way it succeeds; "
        "--strict fails on these]" in lines
    )
    assert lines[lines.index("  configs/train.json: shell: $os.system('touch EXECUTED')") + 1] == (
        "      starts programs: os.system"
    )
    assert lines[-1].endswith("24 need review (0 the bundle's own code, 18 try what the sandbox stops, 6 not contained "
                              "by the sandbox)")  # fmt: skip


def test_strict_fails_on_hostile_intent_and_on_what_the_sandbox_does_not_contain(
    clean_bundle, doctored_bundle, tmp_path, capsys
):
    assert audit(str(clean_bundle), strict=True).endswith("0 not contained by the sandbox)")
    assert "  configs/train.json: shell: $os.system('touch EXECUTED')" in audit(str(doctored_bundle))
    with pytest.raises(SystemExit) as exited:
        audit(str(doctored_bundle), strict=True)
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "  configs/train.json: network_socket: $socket.create_connection(('example.org', 80))" in out
    untyped_only = _make_bundle(tmp_path / "untyped", {**TRAIN, "unknown_call": "$@files.pop()"})
    report = audit(str(untyped_only), strict=True)
    assert "The allow-list cannot vouch for (1) [contained: it runs confined like everything else]" in report
    stopped_only = _make_bundle(tmp_path / "stopped", {**TRAIN, "payload": "$os.system('touch EXECUTED')"})
    with pytest.raises(SystemExit) as exited:
        audit(str(stopped_only), strict=True)
    assert exited.value.code == 1 and "1 try what the sandbox stops, 0 not contained" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        audit(str(tmp_path / "nope"))
    assert exited.value.code == 2 and "no configs directory" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_strict_fails_on_flags_and_executes_nothing(doctored_bundle, tmp_path):
    command = [sys.executable, "-m", "monai_ext", "audit", str(doctored_bundle), "--strict"]
    strict = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert strict.returncode == 1
    assert "      why: os.system: posix.system is not on the allow-list" in strict.stdout
    assert "Not contained by the sandbox (6)" in strict.stdout
    assert not (tmp_path / "EXECUTED").exists()


def test_invalid_config_is_named(tmp_path):
    bundle = _make_bundle(tmp_path / "b", TRAIN)
    (bundle / "configs" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not a valid config file"):
        audit_bundle(bundle)


@pytest.mark.parametrize("bundle", REPO_BUNDLES, ids=[p.name for p in REPO_BUNDLES])
def test_our_own_bundles_have_no_flags(bundle):
    flagged = [item for item in audit_bundle(bundle) if item.flags]
    assert flagged == [], format_report(flagged)


def test_doctored_copy_of_clean_bundle_differs_only_by_the_inserted_flags(clean_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(clean_bundle, copy)
    train = json.loads((copy / "configs" / "train.json").read_text())
    train["run"].append("$os.system('echo hi')")
    (copy / "configs" / "train.json").write_text(json.dumps(train))
    flagged = [(item.key, item.flags) for item in audit_bundle(copy) if item.flags]
    assert flagged == [("run::1", ("os.system: posix.system is not on the allow-list",))]


# logging.conf constructs: (handler section body, expected flag). fileConfig interpolates args, then evals them.
LOGGING_PAYLOADS = {
    "interpolated_code": (
        'class=StreamHandler\np=\')[:1] if __import__("os").system("touch RAN") or 1 else (\'\n'
        "args=(sys.stdout, '%(p)s')\n",
        "args must be a literal tuple, got '(sys.stdout, \\'\\')[:1] if __import__(\"os\").system",
    ),
    "call_in_args": ("class=StreamHandler\nargs=(open('x.log', 'w'),)\n", "is not literal"),
    "unknown_class": ("class=logging.handlers.HTTPHandler\nargs=('example.org', '/')\n", "not one of the accepted"),
    "name_in_kwargs": ("class=StreamHandler\nargs=()\nkwargs={'stream': os.devnull}\n", "names os.devnull"),
    "bad_interpolation": ("class=StreamHandler\nargs=(sys.stdout, '%(missing)s')\n", "interpolation:"),
}


@pytest.mark.parametrize("construct", LOGGING_PAYLOADS)
def test_logging_conf_is_read_as_fileconfig_reads_it(construct, tmp_path):
    from monai.bundle.workflows import _reject_executable_logging_config

    body, expected = LOGGING_PAYLOADS[construct]
    conf = LOGGING_CONF.replace("keys=consoleHandler", "keys=consoleHandler,h").replace(
        "[formatter_fullFormatter]", f"[handler_h]\n{body}\n[formatter_fullFormatter]"
    )
    bundle = _make_bundle(tmp_path / "b", TRAIN, conf)
    flags = [flag for item in audit_bundle(bundle) if item.source == "configs/logging.conf" for flag in item.flags]
    assert any(expected in flag for flag in flags), flags
    if construct == "interpolated_code":  # MONAI's own check lets this one through
        _reject_executable_logging_config(str(bundle / "configs" / "logging.conf"))
        assert not (tmp_path / "RAN").exists()


def test_ids_are_looked_up_not_copied_per_expression():
    # copying the config's ids for every expression made the audit quadratic (8,000 expressions: 10 s)
    from monai_ext.sharing.expressions import rewrite_like_monai

    class CountingIds(set):
        iterations = 0

        def __iter__(self):
            CountingIds.iterations += 1
            return super().__iter__()

    ids = CountingIds({"network", "device"})
    assert rewrite_like_monai("@network.to(@device) + @missing", ids) == (
        "__local_refs['network'].to(__local_refs['device']) + @missing"
    )
    assert CountingIds.iterations == 0


@pytest.mark.parametrize("expression", ["-" * 800 + "1", "1" + "+1" * 3000, "not " * 900 + "1", "torch" + ".abs" * 900])
def test_an_expression_nested_too_deep_to_check_is_a_finding(expression, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(
        json.dumps({"imports": ["$import torch"], "deep": f"${expression}"})
    )
    flagged = [(item.key, item.flags) for item in audit_bundle(tmp_path) if item.flags]
    assert flagged == [("deep", ("nested too deeply to check (Python's recursion limit); refused",))]


def test_a_yaml_bundle_is_audited(tmp_path):
    # five of the Model Zoo's bundles are YAML; without PyYAML (now in the sharing extra) the audit crashed on them
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.yaml").write_text(
        "imports:\n- $import torch\nnetwork: $torch.nn.Identity()\npayload: $__import__('os').system('true')\n"
    )
    flagged = {item.key: item.flags for item in audit_bundle(tmp_path) if item.flags}
    assert list(flagged) == ["payload"] and any(
        "os.system" in flag or "__import__" in flag for flag in flagged["payload"]
    )


def test_the_bundles_own_modules_that_imports_could_reach_are_reported(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"imports": ["$import torch"]}))
    (tmp_path / "itk.py").write_text("import os\n")
    (tmp_path / "numpy.py").write_text("import os\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "__init__.py").write_text("")
    modules = [item for item in audit_bundle(tmp_path) if item.kind == "module"]
    assert all(item.group == "code" and item.needs_review and item.contained for item in modules)
    flagged = {item.key: item.flags[0] for item in modules if item.flags}
    assert sorted(flagged) == ["itk", "numpy"], "scripts/ is the Zoo's place for code: listed, not flagged"
    assert [(i.source, i.key, i.text) for i in modules if not i.flags] == [
        ("scripts/__init__.py", "scripts", "0 lines of Python the configs can import")
    ]
    assert "no installed module of that name, so MONAI's lazy import of it would load this file" in flagged["itk"]
    assert "an installed module of that name is at" in flagged["numpy"] and flagged["numpy"].endswith("needs review")


def test_torch_multiprocessing_is_not_taken_for_a_socket_while_multiprocessing_is(tmp_path):
    train = json.loads(json.dumps(TRAIN))
    train["sharing"] = "$torch.multiprocessing.set_sharing_strategy('file_system')"
    train["listener"] = "$multiprocessing.connection.Listener('/tmp/lab.sock')"
    groups = {item.key: item.group for item in audit_bundle(_make_bundle(tmp_path / "b", train))}
    assert groups["sharing"] != "uncontained" and groups["listener"] == "uncontained"


def test_every_importable_top_level_name_is_flagged_and_nothing_is_imported_or_opened(tmp_path):
    """A received bundle's fire.pyc and yaml.abi3.so ran in the unconfined parent, a FIFO named scripts/net.py hung
    the audit, and a folder named after an installed package's submodule made the audit import that package."""
    import os
    import py_compile
    import subprocess
    import sys

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({"imports": ["$import torch"]}))
    (tmp_path / "fire.py").write_text("import os\n")
    py_compile.compile(str(tmp_path / "fire.py"), cfile=str(bundle / "fire.pyc"))
    (bundle / "yaml.abi3.so").write_bytes(b"\x7fELF")
    (bundle / "package").mkdir()
    py_compile.compile(str(tmp_path / "fire.py"), cfile=str(bundle / "package" / "__init__.pyc"))
    (bundle / "onnx.x").mkdir()  # not an importable name; looking it up would import onnx
    (bundle / "onnx.x" / "__init__.py").write_text("")
    (bundle / "scripts" / "__pycache__").mkdir(parents=True)
    (bundle / "scripts" / "__init__.py").write_text("")
    py_compile.compile(str(tmp_path / "fire.py"), cfile=str(bundle / "scripts" / "__pycache__" / "a.cpython-311.pyc"))
    os.mkfifo(bundle / "scripts" / "net.py")
    probe = (
        "import json, sys\nfrom pathlib import Path\nfrom monai_ext.sharing.audit import bundle_modules\n"
        f"items = bundle_modules(Path({str(bundle)!r}))\n"
        "print(json.dumps({'items': [[i.source, i.key, bool(i.flags)] for i in items], 'onnx': 'onnx' in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    found = json.loads(done.stdout)
    assert sorted(map(tuple, found["items"])) == [
        ("fire.pyc", "fire", True),
        ("package", "package", True),
        ("scripts/__init__.py", "scripts", False),
        ("scripts/__pycache__/a.cpython-311.pyc", "scripts.__pycache__.a.cpython-311", True),
        ("scripts/net.py", "scripts.net", True),
        ("yaml.abi3.so", "yaml", True),
    ]
    assert not found["onnx"], "no package a bundle names is imported"


def test_a_fifo_named_by_a_macro_or_the_command_line_is_never_opened(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"net": "%configs/pipe.json#net"}))
    fifo = tmp_path / "configs" / "pipe.json"
    os.mkfifo(fifo)
    probe = (
        "from monai_ext.sharing.audit import audit_bundle\n"
        f"print([item.text for item in audit_bundle({str(tmp_path)!r})])\n"
        f"audit_bundle({str(tmp_path)!r}, [{str(fifo)!r}])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['%configs/pipe.json#net']", "the macro is reported, its file not read"
    assert done.stderr.strip().splitlines()[-1] == f"ValueError: {fifo}: not a valid config file: not a regular file"


# what a hostile bundle's config does -> (key, group, what the report says it tries). Classified by the object each
# resolves to, so spelling it differently changes nothing.
HOSTILE_INTENT = {
    "$logging.handlers.SocketHandler('/run/user/0/bus', None)": ("uncontained", "logging.handlers.SocketHandler"),
    "$__import__('soc' + 'ket').socket(1, 1)": ("uncontained", "socket.socket"),  # the checker folds constants
    "$__import__(''.join(['so', 'cket'])).socket(1, 1)": ("stopped", "names what it runs only at run time: "
                                                          "builtins.__import__"),
    "$getattr(torch, 'o' + 's').system('true')": ("stopped", "names what it runs only at run time: builtins.getattr"),
    "$__import__('os').system('touch RAN')": ("stopped", "starts programs: os.system"),
    "$__import__('socket').socket(1, 1)": ("uncontained", "socket.socket"),
    "$exec('import os')": ("stopped", "runs code it builds: builtins.exec"),
    "$open(@bundle_root + '/models/extra.json', 'w')": ("stopped", "writes or deletes files by its own path: "
                                                        "builtins.open"),
    "$urllib.request.urlopen('http://example.org')": ("stopped", "uses the network: urllib.request.urlopen"),
    "$ctypes.CDLL(None)": ("stopped", "loads native code: ctypes.CDLL"),
}  # fmt: skip


def test_hostile_intent_is_classified_by_the_object_it_resolves_to_and_counted(tmp_path, capsys):
    train = {
        **TRAIN,
        "imports": [*TRAIN["imports"], "$import logging.handlers", "$import subprocess"],
        **{f"hostile_{i}": expression for i, expression in enumerate(HOSTILE_INTENT)},
    }
    bundle = _make_bundle(tmp_path / "hostile", train)
    items = {item.key: item for item in audit_bundle(bundle)}
    for i, (expression, (group, detail)) in enumerate(HOSTILE_INTENT.items()):
        item = items[f"hostile_{i}"]
        assert (item.group, item.needs_review) == (group, True), expression
        assert detail in item.detail, (expression, item.detail)
    assert items["imports::4"].group == "stopped" and items["imports::4"].detail == "starts programs: subprocess"
    assert items["imports::3"].group == "", "import logging.handlers alone resolves to an allowed module"
    with pytest.raises(SystemExit) as exited:
        audit(str(bundle), strict=True)
    summary = capsys.readouterr().out.splitlines()[-1]
    assert exited.value.code == 1
    assert summary.endswith("need review (0 the bundle's own code, 8 try what the sandbox stops, 3 not contained by "
                            "the sandbox)")  # fmt: skip
