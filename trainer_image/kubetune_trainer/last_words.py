"""What the trainer leaves behind in a pod: output without secrets, and a termination message.

The operator never reads Secrets, so it cannot redact them; the trainer knows
its own credentials (the secretKeyRef env vars) and removes their values from
everything it writes: stdout/stderr (the pod log, which the kubelet falls
back to for the termination message) and the termination message itself,
which the operator copies into status.message and Events.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN")
REDACTED = "[REDACTED]"
MESSAGE_PATH_ENV = "KUBETUNE_TERMINATION_LOG"
DEFAULT_MESSAGE_PATH = "/dev/termination-log"
# The kubelet reads at most 4096 bytes of the message file.
MAX_MESSAGE_BYTES = 4000
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary text


class Redactor:
    def __init__(self, secrets: Iterable[str]):
        # Longest first: a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Redactor":
        return cls(env.get(name, "") for name in SECRET_ENV)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class RedactingStream:
    """A text stream that redacts each write (a secret split across two writes is not caught;
    print() and logging write a message in one call)."""

    def __init__(self, stream: TextIO, redact: Redactor):
        self._stream, self._redact = stream, redact

    def write(self, text: str) -> int:
        self._stream.write(self._redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_output(env: Mapping[str, str] = os.environ) -> Redactor:
    """Redact the credential values from sys.stdout and sys.stderr (call before logging is configured)."""
    redact = Redactor.from_env(env)
    if redact.secrets and not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout, redact)  # type: ignore[assignment]
        sys.stderr = RedactingStream(sys.stderr, redact)  # type: ignore[assignment]
    return redact


def termination_message(details: str, headline: str, redact: Redactor) -> str:
    """Details first, the headline last: the operator quotes the message's last line."""
    headline = redact(" ".join(headline.split()))[:MAX_MESSAGE_BYTES // 2]
    room = MAX_MESSAGE_BYTES - len(headline.encode()) - 1
    body = redact(details.strip()).encode()[:room].decode(errors="ignore")
    return f"{body}\n{headline}" if body else headline


def write_termination_message(text: str, env: Mapping[str, str] = os.environ) -> None:
    """Write the pod's termination message, if this runs where the kubelet provides the file."""
    path = Path(env.get(MESSAGE_PATH_ENV, DEFAULT_MESSAGE_PATH))
    if not path.is_file():
        return  # not in a pod (a local run): the message goes to the console only
    try:
        path.write_text(text)
    except OSError:
        pass  # a read-only or missing file must not turn a clean exit into a crash
