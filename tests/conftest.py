import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def open_tmp_path():
    """A temporary folder any user may enter and write, for probes run as an unprivileged user (pytest's own
    ``tmp_path`` lies in a folder private to the user that runs the tests)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="monai_ext_open_"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
