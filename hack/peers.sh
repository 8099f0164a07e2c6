#!/usr/bin/env bash
# Builds the Go peers kubetune is benchmarked against (benchmarks/operator_peer.py):
# the JobSet controller (sigs.k8s.io/jobset, its main package is the module root)
# and the Kubeflow Trainer v2 controller-manager
# (github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager), both from one
# wrapper module because Trainer imports JobSet's API and both must agree on it.
# Cached outside the repo with the CRDs and the torch runtime taken from the same
# module zips. Prints the bin directory on stdout (logs go to stderr);
# `--crds` prints the CRD directory, `--runtimes` the runtime directory.
# `go install pkg@version` is refused here, so a wrapper module requires both
# (../shared/notes/peers.md); its go.sum is seeded from theirs. Pinned, static,
# no cgo; a build already in the cache is never redone, and a lock makes a second
# caller wait for the first build instead of starting its own. Not part of
# hack/test.sh: only the benchmark needs it (first build several minutes).
set -euo pipefail

JOBSET_VERSION="${JOBSET_VERSION:-v0.12.0}"
TRAINER_VERSION="${TRAINER_VERSION:-v2.3.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
DIR="${CACHE}/peers-jobset-${JOBSET_VERSION}-trainer-${TRAINER_VERSION}"
BIN="${DIR}/bin"
CRDS="${DIR}/crds"
RUNTIMES="${DIR}/runtimes"
log() { echo "[peers] $*" >&2; }

case "${1:-}" in
  ""|--bin|--crds|--runtimes) ;;
  *) log "unknown flag ${1} (use --bin, --crds or --runtimes)"; exit 2 ;;
esac

print_result() {
  case "${1:-}" in
    --crds) echo "${CRDS}" ;;
    --runtimes) echo "${RUNTIMES}" ;;
    *) echo "${BIN}" ;;
  esac
}

complete() {
  [ -x "${BIN}/jobset" ] && [ -x "${BIN}/trainer-controller-manager" ] \
    && [ -d "${CRDS}" ] && [ -d "${RUNTIMES}" ]
}

if complete; then print_result "${1:-}"; exit 0; fi

mkdir -p "${DIR}"
exec 9>"${DIR}/.lock"
flock 9
if complete; then print_result "${1:-}"; exit 0; fi

# Build in a scratch directory and move the results, so an interrupted build
# never leaves a half-written binary or a partial CRD set in the cache; the
# binaries move last, so `complete` only holds once everything is in place.
tmp="$(mktemp -d "${DIR}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=mod"

module_dir() {
  (cd "${tmp}" && go mod download -json "$1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}
log "downloading sigs.k8s.io/jobset ${JOBSET_VERSION} and github.com/kubeflow/trainer/v2 ${TRAINER_VERSION}"
jobset_src="$(module_dir "sigs.k8s.io/jobset@${JOBSET_VERSION}")"
trainer_src="$(module_dir "github.com/kubeflow/trainer/v2@${TRAINER_VERSION}")"
for f in "${jobset_src}/go.sum" "${trainer_src}/go.sum"; do
  [ -f "${f}" ] || { log "no go.sum at ${f}"; exit 1; }
done

cat > "${tmp}/go.mod" <<MOD
module kubetune.local/peers-build

go 1.26.0

require (
	sigs.k8s.io/jobset ${JOBSET_VERSION}
	github.com/kubeflow/trainer/v2 ${TRAINER_VERSION}
)
MOD
sort -u "${jobset_src}/go.sum" "${trainer_src}/go.sum" > "${tmp}/go.sum"
# Its own build tag: with the usual `tools` tag, dependencies' tools.go files
# would be compiled too. Only `go mod tidy` reads this file (both are mains).
cat > "${tmp}/tools.go" <<'GO'
//go:build kubetune_build

package tools

import (
	_ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
	_ "sigs.k8s.io/jobset"
)
GO

log "building jobset and trainer-controller-manager (first time: module downloads and a long compile)"
(
  cd "${tmp}"
  go mod tidy -e >&2 || true
  mkdir -p out
  go build -trimpath -ldflags "-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=${JOBSET_VERSION}" \
    -o out/jobset sigs.k8s.io/jobset >&2
  go build -trimpath -ldflags "-s -w" \
    -o out/trainer-controller-manager github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager >&2
)

mkdir -p "${tmp}/crds" "${tmp}/runtimes"
cp "${jobset_src}"/config/components/crd/bases/*.yaml "${tmp}/crds/"
cp "${trainer_src}"/manifests/base/crds/trainer.kubeflow.org_*.yaml "${tmp}/crds/"
cp "${trainer_src}"/manifests/base/runtimes/torch_distributed.yaml "${tmp}/runtimes/"
chmod -R u+w "${tmp}/crds" "${tmp}/runtimes"

mkdir -p "${BIN}"
rm -rf "${CRDS}" "${RUNTIMES}"
mv "${tmp}/crds" "${CRDS}"
mv "${tmp}/runtimes" "${RUNTIMES}"
mv "${tmp}/out/jobset" "${BIN}/jobset"
mv "${tmp}/out/trainer-controller-manager" "${BIN}/trainer-controller-manager"
log "built ${BIN}/{jobset,trainer-controller-manager} ($(ls "${CRDS}" | wc -l) CRDs in ${CRDS})"
print_result "${1:-}"
