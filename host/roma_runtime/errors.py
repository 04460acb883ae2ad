"""The one exception type users see: a message naming the problem and a hint saying what to do."""


class RomaError(Exception):
    """A user-facing error. The CLI prints it without a traceback and exits non-zero."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
