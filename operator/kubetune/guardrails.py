"""The platform team's guardrails, checked by the operator (the chart's admission policy checks the
same rules at apply time; helm/kubetune/templates/policy-guardrails.yaml).

An allow-list entry ending in "*" is a prefix, any other entry an exact value; an empty list allows
anything. The operator's own defaults (trainer image, default storage Secret) are always allowed:
the platform team chose them.
"""

from __future__ import annotations

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.settings import OperatorSettings


def allowed(value: str, patterns: tuple[str, ...]) -> bool:
    """Whether value matches an allow-list; an empty list allows everything."""
    if not patterns:
        return True
    return any(value.startswith(p[:-1]) if p.endswith("*") else value == p for p in patterns)


def finetunejob_guardrail_problems(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[str]:
    """Each image or Secret in spec that the operator's allow-lists refuse, with its field path."""
    problems = []
    image = spec.images.trainer
    if image is not None and not allowed(image, settings.allowed_trainer_images):
        problems.append(f"spec.images.trainer: image {image!r} is not allowed on this cluster; "
                        f"allowed: {', '.join(settings.allowed_trainer_images)}")
    secrets = {
        "spec.storage.credentialsSecret.name": spec.storage.credentials_secret if spec.storage else None,
        "spec.baseModel.tokenSecret.name": spec.base_model.token_secret,
    }
    permitted = settings.allowed_secrets + ((settings.default_storage_secret,) if settings.default_storage_secret else ())
    for path, ref in secrets.items():
        if ref is not None and settings.allowed_secrets and not allowed(ref.name, permitted):
            problems.append(f"{path}: Secret {ref.name!r} may not be referenced on this cluster; "
                            f"allowed: {', '.join(permitted)}")
    return problems
