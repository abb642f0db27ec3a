"""The exceptions of ``hesnr score`` (imports nothing: the command's first checks run before torch loads)."""


class ScoreError(ValueError):
    """Bad input or a failed engine: one line naming the flag, file or server."""


class ScoreInterrupted(ScoreError):
    """Ctrl-C: what was done is kept; ``hesnr score`` exits 130, as ``hesnr prepare`` does."""
