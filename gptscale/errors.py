"""The one base class of the errors gptscale reports to a user instead of a traceback.

Every module's own error (ConfigError, TaskDataError, ShardError, CheckpointError, ...) derives from
``GptscaleError``; its message names the file or key, what is wrong and the fix. The console script and the
training entry points (gptscale.runtime.run.run_cli) print ``gptscale CMD: error: MESSAGE`` and exit 2 for
these, and only these: anything else is a bug and keeps its traceback.
"""


class GptscaleError(Exception):
    """A bad input, file or setting; the message says which and what to change."""


EXIT_USAGE = 2
"""Exit status of a run stopped by a GptscaleError."""
