"""The one exception of ``hesnr score`` (imports nothing: the command's first checks run before torch loads)."""


class ScoreError(ValueError):
    """Bad input or a failed engine: one line naming the flag, file or server."""
