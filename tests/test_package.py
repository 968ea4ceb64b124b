import json
import subprocess
import sys

import pytest

import monai_ext


def test_import_exposes_public_layout():
    assert monai_ext.networks.blocks is not None
    assert monai_ext.networks.nets is not None
    assert monai_ext.legacy is not None


def test_cli_help_lists_commands():
    # fire writes help to stderr when stdout is not a terminal
    done = subprocess.run(
        [sys.executable, "-m", "monai_ext", "--help"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "versions" in done.stdout + done.stderr


def test_cli_versions_reports_installed_packages():
    import monai
    import torch

    out = subprocess.run(
        [sys.executable, "-m", "monai_ext", "versions"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    reported = json.loads(out)
    assert reported["monai"] == monai.__version__
    assert reported["torch"] == torch.__version__
    assert reported["monai_ext"] == monai_ext.__version__


@pytest.mark.parametrize("package", ["monai_ext.bundle", "monai_ext.bundle.planning", "monai_ext.sharing"])
def test_every_module_is_reachable_by_its_dotted_name_after_import_monai_ext(package):
    """Configs name ``monai_ext.bundle.errors.concise_errors`` after ``$import monai_ext`` only: each package imports
    its modules when first named, so each must be listed."""
    import importlib
    import pkgutil

    module = importlib.import_module(package)
    found = sorted(info.name for info in pkgutil.iter_modules(module.__path__))
    assert sorted(module.MODULES) == found
