"""Model and data URIs resolve to local paths, or fail naming the URI."""

from __future__ import annotations

import pytest

from kubetune_trainer.storage import resolve_uri

pytestmark = pytest.mark.unit


def test_pkg_uri_finds_a_file_shipped_in_a_package():
    path = resolve_uri("pkg://kubetune/api/finetunejob.py")
    assert path.name == "finetunejob.py" and path.is_file()


def test_pkg_uri_of_a_missing_package_or_file_is_named():
    with pytest.raises(FileNotFoundError, match="pkg://no_such_pkg/x.gguf: Python package 'no_such_pkg' is not installed"):
        resolve_uri("pkg://no_such_pkg/x.gguf")
    with pytest.raises(FileNotFoundError, match="pkg://kubetune/missing.gguf"):
        resolve_uri("pkg://kubetune/missing.gguf")


def test_relative_paths_resolve_against_the_manifest_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    assert resolve_uri("./data/train.jsonl", tmp_path) == (tmp_path / "data" / "train.jsonl").resolve()
    with pytest.raises(FileNotFoundError, match=r"\./data/missing.jsonl"):
        resolve_uri("./data/missing.jsonl", tmp_path)


@pytest.mark.parametrize("uri", ["hf://org/model", "hf://org/dataset/train.jsonl"])
def test_unreachable_hub_fails_naming_the_uri(uri, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here; offline mode fails fast instead of retrying
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=f"{uri}: cannot download from the Hugging Face hub"):
        resolve_uri(uri)
