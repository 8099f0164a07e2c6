"""Why a trainer pod stopped, in one line with the trainer's own last words, credentials masked. Pure."""

from __future__ import annotations

import re

from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_PREEMPTED
from kubetune.builders.trainer.job import CONTAINER

# The trainer's last words are copied into status and Events, which more people read than the
# Secret. The operator never reads Secrets, so it cannot know the values; it masks what looks like
# one: NAME=value / NAME: value for credential-like names, URL user:password@, Hugging Face tokens.
_CREDENTIAL_ASSIGNMENT = re.compile(
    # Names are identifiers (env vars, config keys), never path parts: s3://b/secret-1.jsonl: ... stays.
    r"(?i)(?<![\w./-])([A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY)[A-Z0-9_]*['\"]?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;'\"]+)")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")
REDACTED = "<redacted>"


def redact_credentials(text: str) -> str:
    text = _CREDENTIAL_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
    return _HF_TOKEN.sub(REDACTED, _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text))


def terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def disrupted(pod: dict) -> dict | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return cond
    return None


def describe_pod_failure(pod: dict) -> str:
    """One line on why a trainer pod stopped, with the trainer's own last words."""
    name = pod["metadata"]["name"]
    disruption = disrupted(pod)
    term = terminated(pod) or {}
    code = term.get("exitCode")
    if code == EXIT_PREEMPTED:
        text = f"pod {name} was preempted and saved a checkpoint (exit {code}); not counted against backoffLimit"
    elif disruption is not None:
        text = (f"pod {name} was disrupted ({disruption.get('reason') or 'DisruptionTarget'}); "
                "not counted against backoffLimit")
    elif code == EXIT_BAD_INPUT:
        text = f"pod {name}: the trainer rejected its input (exit {code}); fix the dataset or spec and recreate the job"
    elif code is not None:
        text = f"pod {name}: trainer exited {code}" + (f" ({term['reason']})" if term.get("reason") else "")
    else:
        text = f"pod {name} failed: {(pod.get('status') or {}).get('reason') or 'unknown reason'}"
    last_words = (term.get("message") or "").strip()
    if last_words:
        text += f": {redact_credentials(last_words.splitlines()[-1])}"
    return text
