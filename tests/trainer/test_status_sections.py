"""Besides progress, the trainer publishes its status sections: data summary, checkpoints, evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.finetunejob import CheckpointRef, DatasetSummary, EvaluationSummary, Progress
from kubetune.api.manifest import load_manifest
from kubetune.api.trainer_config import EXIT_OK, TrainerConfig
from kubetune_trainer.progress import KubernetesStatusReporter
from kubetune_trainer.recipe import run

from .tiny import write_job

pytestmark = pytest.mark.trainer


class RecordingReporter:
    def __init__(self) -> None:
        self.progress: list[Progress] = []
        self.sections: list[object] = []

    def report(self, progress: Progress, force: bool = False) -> None:
        self.progress.append(progress)

    def publish(self, section: object) -> None:
        self.sections.append(section)

    def close(self) -> None:
        pass


def test_recipe_publishes_dataset_checkpoints_and_evaluation(tiny_model, tiny_data, tmp_path):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method="lora",
                    storage={"uri": "unused", "checkpointIntervalSteps": 3})
    spec = load_manifest(job).spec
    out = tmp_path / "run"
    cfg = TrainerConfig(job_name="t", storage_uri=str(out), spec=spec)
    reporter = RecordingReporter()
    result = run(cfg, job.parent, tmp_path / "work", reporter)
    assert result.exit_code == EXIT_OK

    datasets = [s for s in reporter.sections if isinstance(s, DatasetSummary)]
    assert len(datasets) == 1
    assert datasets[0].examples == 60 and datasets[0].validation_examples == 12 and datasets[0].invalid_lines == 0
    assert datasets[0].report_uri.endswith("reports/data-validation.json")

    checkpoints = [s for s in reporter.sections if isinstance(s, CheckpointRef)]
    assert [c.step for c in checkpoints] == [3, 6]
    assert all(Path(c.uri, "MANIFEST.json").is_file() for c in checkpoints), "published only once complete"

    [evaluation] = [s for s in reporter.sections if isinstance(s, EvaluationSummary)]
    assert evaluation.samples == 8 and evaluation.tuned_loss == pytest.approx(result.evaluation["tuned"]["loss"])
    assert evaluation.base_loss == pytest.approx(result.evaluation["base"]["loss"])
    # The headline metric for the answers' shape, and the regressions a ModelDeployment's gate reads.
    head = result.evaluation["headline"]
    assert evaluation.metric == head and evaluation.shape == result.evaluation["shape"]
    assert evaluation.tuned_score == result.evaluation["tuned"]["metrics"][head]["value"]
    assert evaluation.base_score == result.evaluation["base"]["metrics"][head]["value"]
    assert evaluation.regressions == result.evaluation["regressions"] == len(result.evaluation["regressedExamples"])
    assert reporter.progress and reporter.progress[-1].step == 6


def test_bad_data_is_published_with_the_invalid_line_count(tiny_model, tiny_data, tmp_path):
    train, val = tiny_data
    broken = tmp_path / "broken.jsonl"
    broken.write_text(train.read_text() + "{not json\n")
    job = write_job(tmp_path / "job.yaml", tiny_model, broken, val, method="lora")
    cfg = TrainerConfig(job_name="t", storage_uri=str(tmp_path / "run"), spec=load_manifest(job).spec)
    reporter = RecordingReporter()
    assert run(cfg, job.parent, tmp_path / "work", reporter).exit_code == 65
    [summary] = [s for s in reporter.sections if isinstance(s, DatasetSummary)]
    assert summary.invalid_lines == 1


class FakeStatusApi:
    """Records the status patches the Kubernetes reporter sends (the e2e test uses a real apiserver)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        assert (group, plural, name, namespace) == ("kubetune.io", "finetunejobs", "job", "ns")
        self.bodies.append(body)


def test_kubernetes_reporter_patches_only_its_sections_and_throttles():
    api = FakeStatusApi()
    reporter = KubernetesStatusReporter("job", "ns", min_interval_s=3600, api=api)
    reporter.report(Progress(step=1, total_steps=10))
    reporter.report(Progress(step=2, total_steps=10))  # throttled, kept for close()
    reporter.publish(CheckpointRef(uri="s3://b/p/checkpoints/step-00000002", step=2))
    reporter.close()
    assert [list(b["status"]) for b in api.bodies] == [["progress"], ["lastCheckpoint"], ["progress"]]
    assert api.bodies[0]["status"]["progress"]["step"] == 1
    assert api.bodies[-1]["status"]["progress"]["step"] == 2
    assert api.bodies[1]["status"]["lastCheckpoint"] == {"uri": "s3://b/p/checkpoints/step-00000002", "step": 2}
