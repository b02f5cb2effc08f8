"""Progress and warnings on stderr (silenced by --quiet); stdout carries results only."""
from __future__ import annotations

import sys


class Log:
    def __init__(self, quiet: bool, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            print(f"warning: {message}", file=self.stream, flush=True)
