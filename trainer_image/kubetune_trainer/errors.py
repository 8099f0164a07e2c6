"""The trainer's one expected failure: input that no retry can fix (exit 65)."""

from __future__ import annotations


class BadInput(Exception):
    """Bad data or configuration: retrying cannot help (exit code 65).

    `headline`, when the text's last line is not the one a user should read first (the pod's
    termination message ends with it and the operator quotes that line in status).
    """

    def __init__(self, text: str, headline: str | None = None):
        super().__init__(text)
        self.headline = headline
