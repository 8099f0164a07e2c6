"""kubetune: a Kubernetes operator for self-serve LLM fine-tuning and serving."""
