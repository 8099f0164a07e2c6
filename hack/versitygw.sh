#!/usr/bin/env bash
# Builds versitygw, an S3 gateway over a POSIX directory, into a cache
# directory outside the repo and prints the binary's path on stdout (logs go
# to stderr). The tests use it as an S3 store that keeps its data across a
# restart (moto's server forgets everything). Pinned version, static build, no
# cgo; a binary already in the cache is never rebuilt, so hack/test.sh can call
# this every time for free. First build: ~3 min on 2 cores (~340 MB of module
# downloads); later builds after a cache wipe reuse Go's module cache.
set -euo pipefail

VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
BIN="${CACHE}/versitygw-${VERSITYGW_VERSION}/bin"
log() { echo "[versitygw] $*" >&2; }

if [ -x "${BIN}/versitygw" ]; then
  echo "${BIN}/versitygw"
  exit 0
fi

mkdir -p "${BIN}"
# go install writes straight into GOBIN; build into a scratch GOBIN and move
# the finished binary so an interrupted build never leaves a half-written one.
tmp="$(mktemp -d "${BIN}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
log "building github.com/versity/versitygw ${VERSITYGW_VERSION} (first time: a few minutes)"
GOBIN="${tmp}" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
  go install -trimpath -ldflags "-s -w" \
  "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}" >&2
mv "${tmp}/versitygw" "${BIN}/versitygw"
log "built ${BIN}/versitygw"
echo "${BIN}/versitygw"
