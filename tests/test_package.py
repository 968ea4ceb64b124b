import json
import subprocess
import sys

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
