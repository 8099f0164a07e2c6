#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs and builds everything
# the tests need, then runs every tier except gpu. Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"
venv="$(bash hack/bootstrap.sh)"
tools_bin="$(bash hack/tools.sh)"
bash hack/gateway-api-crds.sh >/dev/null
# versitygw: the S3 store that keeps its data across restarts (tests/support/s3_fixtures.py).
KUBETUNE_VERSITYGW="$(bash hack/versitygw.sh)"
export KUBETUNE_VERSITYGW
# Traefik: the Gateway API router of the data-plane tests (tests/support/dataplane.py).
KUBETUNE_TRAEFIK="$(bash hack/traefik.sh)"
export KUBETUNE_TRAEFIK
# Kueue: admits, queues and preempts FineTuneJobs' Jobs in tests/e2e/test_kueue*.py.
KUBETUNE_KUEUE="$(bash hack/kueue.sh)"
export KUBETUNE_KUEUE
# Argo CD's Lua engine and Flux's kstatus, for the GitOps health checks (tests/integration/test_gitops_health.py).
KUBETUNE_GITOPS_HEALTH="$(bash hack/gitops-health.sh)"
export KUBETUNE_GITOPS_HEALTH
# Both images built from their Dockerfiles (podman/buildah/runc); the images tier runs them (docs/images.md).
KUBETUNE_IMAGES="$(bash hack/images.sh)"
export KUBETUNE_IMAGES
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash hack/build-k8s.sh)"
  export KUBEBUILDER_ASSETS
fi
export PATH="${venv}/bin:${tools_bin}:${PATH}"
exec "${venv}/bin/python" -m pytest -m "not gpu" "$@"
