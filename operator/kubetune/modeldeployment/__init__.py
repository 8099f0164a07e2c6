"""The ModelDeployment controller: serving revisions with vLLM, canary rollout, Prometheus analysis."""
