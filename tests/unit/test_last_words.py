"""The trainer's termination message and output redaction (what reaches status.message and Events)."""

import io

import pytest

from kubetune_trainer.last_words import (
    MAX_MESSAGE_BYTES,
    REDACTED,
    RedactingStream,
    Redactor,
    termination_message,
    write_termination_message,
)

pytestmark = pytest.mark.unit

ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "HF_TOKEN": "hf_abcdef"}


def test_credential_values_are_redacted_and_ids_are_not():
    redact = Redactor.from_env(ENV)
    text = redact("key AKIAEXAMPLE secret wJalrXUtnFEMI/K7MDENG token hf_abcdef")
    assert text == f"key AKIAEXAMPLE secret {REDACTED} token {REDACTED}"


def test_short_or_empty_values_do_not_blank_ordinary_text():
    assert Redactor.from_env({"AWS_SECRET_ACCESS_KEY": "a", "HF_TOKEN": ""})("a plain line") == "a plain line"


def test_stream_redacts_each_write():
    out = io.StringIO()
    stream = RedactingStream(out, Redactor.from_env(ENV))
    print("failed with wJalrXUtnFEMI/K7MDENG in the path", file=stream)
    assert out.getvalue() == f"failed with {REDACTED} in the path\n"


def test_message_ends_with_the_headline_even_when_details_are_long():
    msg = termination_message("detail line\n" * 1000, "bad data: s3://b/train.jsonl:3: not JSON", Redactor([]))
    assert len(msg.encode()) <= MAX_MESSAGE_BYTES
    assert msg.splitlines()[-1] == "bad data: s3://b/train.jsonl:3: not JSON"


def test_message_is_redacted_and_written_only_where_the_file_exists(tmp_path):
    path = tmp_path / "termination-log"
    msg = termination_message("s3://b/wJalrXUtnFEMI/K7MDENG.jsonl: no such object", "spec.dataset: missing",
                              Redactor.from_env(ENV))
    write_termination_message(msg, {"KUBETUNE_TERMINATION_LOG": str(path)})
    assert not path.exists()  # not in a pod: nothing created
    path.touch()
    write_termination_message(msg, {"KUBETUNE_TERMINATION_LOG": str(path)})
    assert path.read_text() == f"s3://b/{REDACTED}.jsonl: no such object\nspec.dataset: missing"
