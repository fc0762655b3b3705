"""The one base class of the errors gptscale reports to a user instead of a traceback.

Every module's own error (ConfigError, TaskDataError, ShardError, CheckpointError, ...) derives from
``GptscaleError``; its message names the file or key, what is wrong and the fix. The console script and the
training entry points (gptscale.runtime.run.run_cli) print ``gptscale CMD: error: MESSAGE`` and exit 2 for
these, and only these: anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class GptscaleError(Exception):
    """A bad input, file or setting; the message says which and what to change."""


EXIT_USAGE = 2
"""Exit status of a run stopped by a GptscaleError."""
USER_ERRORS = (GptscaleError, FileNotFoundError)
"""What run_cli reports as a message: our errors, and a path that is not there (named by the OS error)."""


def run_cli(prog: str, fn: Callable[..., int | None], *args: Any) -> int:
    """The one error policy of every command: ``fn(*args)``'s exit status (None: 0); a GptscaleError or a
    missing file is printed as ``PROG: error: MESSAGE`` on stderr with exit status 2, without a traceback."""
    try:
        rc = fn(*args)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return 0 if rc is None else rc
