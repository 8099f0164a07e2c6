#!/usr/bin/env bash
# Builds Kueue (sigs.k8s.io/kueue, the batch admission controller) from Go
# modules into a cache directory outside the repo, next to its CRDs taken from
# the same module zip, and prints the binary's path on stdout (logs go to
# stderr); `--crds` prints the CRD directory instead. The e2e tests run it out
# of cluster against the simulated cluster (tests/support/kueue_fixtures.py).
# `go install pkg@version` is refused here, so a wrapper module requires Kueue;
# its go.sum is seeded from Kueue's own go.sum because one dependency's
# checksum-database lookup fails (../shared/notes/peers.md). Pinned, static, no
# cgo; a binary already in the cache is never rebuilt, and a lock makes a second
# caller wait for the first build instead of starting its own. First build:
# see docs/kueue.md (module downloads plus a long compile).
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.19.2}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
DIR="${CACHE}/kueue-${KUEUE_VERSION}"
BIN="${DIR}/bin"
CRDS="${DIR}/crds"
log() { echo "[kueue] $*" >&2; }

print_result() {
  if [ "${1:-}" = "--crds" ]; then echo "${CRDS}"; else echo "${BIN}/kueue"; fi
}

if [ -x "${BIN}/kueue" ] && [ -d "${CRDS}" ]; then
  print_result "${1:-}"
  exit 0
fi

mkdir -p "${DIR}"
exec 9>"${DIR}/.lock"
flock 9
if [ -x "${BIN}/kueue" ] && [ -d "${CRDS}" ]; then
  print_result "${1:-}"
  exit 0
fi

# Build in a scratch directory and move the results, so an interrupted build
# never leaves a half-written binary or a partial CRD set in the cache.
tmp="$(mktemp -d "${DIR}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=mod"

log "downloading sigs.k8s.io/kueue ${KUEUE_VERSION}"
src="$(cd "${tmp}" && go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
[ -f "${src}/go.sum" ] || { log "no go.sum in ${src}"; exit 1; }

cat > "${tmp}/go.mod" <<MOD
module kubetune.local/kueue-build

go 1.26.0

require sigs.k8s.io/kueue ${KUEUE_VERSION}
MOD
cp "${src}/go.sum" "${tmp}/go.sum"
# Its own build tag: with the usual `tools` tag, dependencies' tools.go files would be compiled too.
cat > "${tmp}/tools.go" <<'GO'
//go:build kubetune_build

package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
GO

log "building sigs.k8s.io/kueue/cmd/kueue ${KUEUE_VERSION} (first time: module downloads and a long compile)"
(
  cd "${tmp}"
  go mod tidy -e >&2 || true
  go build -tags kubetune_build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}" \
    -o "${tmp}/kueue" sigs.k8s.io/kueue/cmd/kueue >&2
)
mkdir -p "${tmp}/crds"
cp "${src}"/config/components/crd/bases/*.yaml "${tmp}/crds/"
chmod -R u+w "${tmp}/crds"

mkdir -p "${BIN}"
rm -rf "${CRDS}"
mv "${tmp}/crds" "${CRDS}"
mv "${tmp}/kueue" "${BIN}/kueue"
log "built ${BIN}/kueue ($(ls "${CRDS}" | wc -l) CRDs in ${CRDS})"
print_result "${1:-}"
