"""One line instead of a traceback, under MONAI's own runner.

``python -m monai.bundle run`` evaluates our checks inside config expressions, so an error of ours reached the user
as 60 to 140 lines of traceback ending in "Failed to evaluate ConfigExpression". :func:`concise_errors`, the first
step of a bundle's ``initialize``, makes an uncaught :class:`BundleError` (anywhere in the chain of causes) print as
its own message alone, and a Ctrl-C during training print the exact command that resumes it
(:class:`monai_ext.bundle.logs.TidyEngineRecords` leaves out the records Ignite and MONAI's ``StatsHandler`` log of
either).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from types import TracebackType

__all__ = ["BundleError", "concise_errors", "printed_alone", "resume_command"]


class BundleError(Exception):
    """An error whose message names what is wrong and what to do about it; printed alone under MONAI's runner."""


def printed_alone(error: BaseException | None) -> bool:
    """Whether :func:`concise_errors` prints ``error`` as one line (ours, or a Ctrl-C), so that logging it again with
    its traceback (Ignite, MONAI's ``StatsHandler``) only buries that line."""
    return any(_in_chain(error, kind) is not None for kind in (BundleError, KeyboardInterrupt))


def _in_chain(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def resume_command(argv: Sequence[str]) -> str:
    """The command line that ran (``sys.argv`` of ``python -m monai.bundle run ...``) with ``--resume True``."""
    arguments, skip = [], False
    for argument in argv[1:]:
        if skip:
            skip = False
        elif argument == "--resume":
            skip = True
        elif not argument.startswith("--resume="):
            arguments.append(argument)
    return shlex.join([sys.executable, "-m", "monai.bundle", *arguments, "--resume", "True"])


def concise_errors(resumable: bool = False) -> None:
    """Print an uncaught :class:`BundleError` as one line (its class and message), and with ``resumable`` a Ctrl-C
    as one line with the command that resumes the run; everything else keeps Python's traceback."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        ours = _in_chain(error, BundleError)
        if ours is not None:
            print(f"{type(ours).__name__}: {ours}", file=sys.stderr, flush=True)
        elif resumable and _in_chain(error, KeyboardInterrupt) is not None:
            print(f"Interrupted; the last finished epoch is kept. Resume with: {resume_command(sys.argv)}",
                  file=sys.stderr, flush=True)  # fmt: skip
        else:
            previous(kind, error, trace)

    sys.excepthook = hook
