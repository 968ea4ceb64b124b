"""``python -m monai_ext``. ``-m`` puts the working directory first on ``sys.path``; run from inside a received
bundle, a ``fire.py``, ``yaml`` or ``json`` module of the bundle would then run in this unconfined process before any
check. The directory is dropped before anything else is imported (the ``monai-ext`` console script never has it).
"""

import os
import sys

sys.path[:] = [entry for entry in sys.path if entry not in ("", os.getcwd())]

from monai_ext.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
