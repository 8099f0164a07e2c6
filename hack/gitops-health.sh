#!/usr/bin/env bash
# Builds hack/gitops-health (Argo CD's Lua engine gopher-lua and Flux's kstatus
# from sigs.k8s.io/cli-utils, versions pinned in its go.mod/go.sum) into a cache
# directory outside the repo and prints the binary's path on stdout (logs go to
# stderr). The cache key is a digest of the module's sources, so editing them
# rebuilds and a binary already built for them is never rebuilt: hack/test.sh
# calls this every time for free. First build: see docs/gitops.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${root}/hack/gitops-health"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
digest="$(cat "${src}/go.mod" "${src}/go.sum" "${src}"/*.go | sha256sum | cut -c1-12)"
BIN="${CACHE}/gitops-health-${digest}/bin"
log() { echo "[gitops-health] $*" >&2; }

if [ -x "${BIN}/gitops-health" ]; then
  echo "${BIN}/gitops-health"
  exit 0
fi

mkdir -p "${BIN}"
# Build into a scratch file and move it, so an interrupted build never leaves a half-written binary.
tmp="$(mktemp "${BIN}/.build.XXXXXX")"
trap 'rm -f "${tmp}"' EXIT
log "building ${src} (gopher-lua, sigs.k8s.io/cli-utils kstatus)"
(cd "${src}" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" \
  go build -trimpath -ldflags "-s -w" -o "${tmp}" .) >&2
chmod +x "${tmp}"
mv "${tmp}" "${BIN}/gitops-health"
log "built ${BIN}/gitops-health"
echo "${BIN}/gitops-health"
