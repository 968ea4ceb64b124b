"""The command line: its listing, and that `versions` and `--help` import no command module (nor torch, nor MONAI)."""

import importlib
import inspect
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import monai_ext
from monai_ext.cli import COMMANDS, usage

PROBE = """
import runpy, sys
sys.argv = ["monai_ext", *{argv!r}]
try:
    runpy.run_module("monai_ext", run_name="__main__")
finally:
    heavy = sorted(name for name in ("torch", "monai", "ignite", "numpy", "monai_ext.sharing") if name in sys.modules)
    print("IMPORTED", heavy)
"""


def _run(*argv):
    return subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))], capture_output=True, text=True)


def test_the_listing_gives_each_command_its_functions_own_summary():
    listing = usage()
    for name, (target, summary) in COMMANDS.items():
        module, function = target.split(":")
        assert inspect.getdoc(getattr(importlib.import_module(module), function)).splitlines()[0] == summary, name
        assert f"  {name}" in listing and summary in listing


def test_versions_and_help_start_without_torch_or_monai():
    done = _run("versions")
    assert done.returncode == 0, done.stderr
    printed, imported = done.stdout.split("IMPORTED")
    assert json.loads(printed) == {
        "monai_ext": metadata.version("monai-ext"), "monai": metadata.version("monai"),
        "torch": metadata.version("torch"), "pytorch-ignite": metadata.version("pytorch-ignite"),
        "numpy": metadata.version("numpy"),
    }  # fmt: skip
    assert imported.strip() == "[]"
    for flag in ("--help", "-h"):
        done = _run(flag)
        assert done.stdout.startswith("usage: python -m monai_ext COMMAND") and "IMPORTED []" in done.stdout


def test_an_unknown_command_is_named_with_the_listing():
    done = subprocess.run([sys.executable, "-m", "monai_ext", "trian"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("monai_ext: unknown command 'trian'") and "commands:" in done.stderr


def test_import_monai_ext_reaches_every_component_by_its_dotted_name():
    import monai_ext

    assert monai_ext.networks.blocks.SABlock.__module__ == "monai_ext.networks.blocks.selfattention"
    assert monai_ext.bundle.model_record.keep_trained_model.__name__ == "keep_trained_model"
    assert {"bundle", "legacy", "networks", "sharing"} <= set(dir(monai_ext))


def test_modules_of_the_working_directory_never_run_in_the_command_line(tmp_path):
    """Run from inside a received bundle, ``python -m`` puts the bundle's folder first on sys.path: its ``fire.py``
    or ``json.py`` ran before any check. The control imports them the way the command line would have."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    marker = tmp_path / "ran"
    for name in ("fire", "json", "typing", "yaml"):
        (bundle / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + ' ')\nraise ImportError\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    control = subprocess.run([sys.executable, "-c", "import fire"], cwd=bundle, capture_output=True, env=env)
    assert control.returncode != 0 and marker.read_text() == "fire "
    marker.unlink()
    console_script = str(Path(sys.executable).parent / "monai-ext")
    for command in ([sys.executable, "-m", "monai_ext", "versions"], [console_script, "versions"]):
        done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["monai_ext"] == monai_ext.__version__
        assert not marker.exists(), f"{command}: the working directory's modules ran: {marker.read_text()}"
