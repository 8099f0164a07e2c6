#!/usr/bin/env bash
# Fetches the Gateway API standard CRDs (HTTPRoute, Gateway, GatewayClass, ...)
# from the pinned Go module sigs.k8s.io/gateway-api, which ships them under
# config/crd/standard/, into a cache directory outside the repo; prints that
# directory. v1.4.1 matches Traefik 3.6 (the data-plane tests' router).
# Idempotent: when the CRDs are cached it returns at once, without network.
set -euo pipefail

GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.1}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
OUT="${CACHE}/gateway-api-${GATEWAY_API_VERSION}/crds"
if [ -f "${OUT}/.complete" ]; then
  echo "${OUT}"
  exit 0
fi
echo "[gateway-api] downloading sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION} (Go module proxy)" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
dir=$(cd "${tmp}" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "${OUT}"
cp "${dir}"/config/crd/standard/*.yaml "${OUT}/"
chmod u+w "${OUT}"/*.yaml
touch "${OUT}/.complete"
echo "${OUT}"
