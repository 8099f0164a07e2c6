"""A kubelet for the test bed: pods whose images map to local commands run as real processes.

- images.py: LocalImage (an image's PATH/ENV), the trainer image (the project's venv) and the vLLM stand-in image.
- probe.py: readiness probes (httpGet), run inside the pods' network namespace.
- resolve.py: env and volume contents as a kubelet resolves them (Secrets, ConfigMaps, tokens, downward API).
- sandbox.py: the per-pod directory and each container's process in its own mount/UTS namespace.
- status.py: pod status from container states (pure).
- runner.py: the loop that starts, watches, stops and reports pods.
See docs/testing.md ("The pod runner") for what it emulates and what it does not.
"""

from .images import TRAINER_IMAGE, VLLM_STANDIN_IMAGE, LocalImage, trainer_image, vllm_standin_image
from .runner import PodRunner

__all__ = ["LocalImage", "PodRunner", "TRAINER_IMAGE", "VLLM_STANDIN_IMAGE", "trainer_image", "vllm_standin_image"]
