"""Errors the tool reports to users, and the exit codes they map to.

Every failure a user can cause or meet is one of these; the CLI prints
``error: <message>`` on one line of stderr and exits with ``exit_code``.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an input could not be used, or the model / a write failed
EXIT_USAGE = 2  # bad arguments: found before the model loads
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM: finished results are kept


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class QwenVLError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    exit_code = EXIT_FAILURE
    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line

    def __str__(self) -> str:
        return self.message

    def as_record(self) -> dict:
        """The `error` field of a result record."""
        return {"type": self.kind, "message": self.message}


class UsageError(QwenVLError):
    """Arguments that cannot work together or are out of range."""

    exit_code = EXIT_USAGE
    kind = "usage_error"


class InputError(QwenVLError):
    """An input (image, PDF, video, URL, history, schema) cannot be used."""

    kind = "input_error"

    def __init__(self, source: str, cause: str):
        self.source = source
        self.cause = cause
        super().__init__(f"{source}: {cause}")


class ModelError(QwenVLError):
    """The model cannot be found, loaded, or placed on the requested device."""

    kind = "model_error"


class GenerationError(QwenVLError):
    """Generation failed for one request (for example out of memory)."""

    kind = "generation_error"


class OutputError(QwenVLError):
    """A result could not be written where the user asked."""

    kind = "output_error"


class Interrupted(QwenVLError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"
