#!/usr/bin/env bash
# Builds Traefik (the data-plane tests' Gateway API router) from Go modules
# into a cache directory outside the repo and prints the binary's path on
# stdout (logs go to stderr). `go install` refuses Traefik's replace
# directives, so a wrapper module requires it and repeats them (the recipe in
# ../shared/notes/serving.md: v3.6.x builds this way, v3.7 does not). Pinned,
# static, no cgo; a binary already in the cache is never rebuilt. First build
# on 2 cores: see the README's test section (module downloads plus compile).
set -euo pipefail

TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
BIN="${CACHE}/traefik-${TRAEFIK_VERSION}/bin"
log() { echo "[traefik] $*" >&2; }

if [ -x "${BIN}/traefik" ]; then
  echo "${BIN}/traefik"
  exit 0
fi

mkdir -p "${BIN}"
# One build at a time: a second caller waits for the first and then finds the binary.
exec 9>"${BIN}/.lock"
flock 9
if [ -x "${BIN}/traefik" ]; then
  echo "${BIN}/traefik"
  exit 0
fi
# Build in a scratch directory and move the finished binary, so an interrupted
# build never leaves a half-written one in the cache.
tmp="$(mktemp -d "${BIN}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
cat > "${tmp}/go.mod" <<MOD
module kubetune.local/traefik-build

go 1.24

require github.com/traefik/traefik/v3 ${TRAEFIK_VERSION}

replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
	github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595
)

exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible
MOD
cat > "${tmp}/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
GO
log "building github.com/traefik/traefik/v3 ${TRAEFIK_VERSION} (first time: module downloads and a long compile)"
(
  cd "${tmp}"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=mod"
  go mod tidy -e >&2 || true
  go build -tags tools -trimpath -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=${TRAEFIK_VERSION}" -o "${tmp}/traefik" github.com/traefik/traefik/v3/cmd/traefik >&2
)
mv "${tmp}/traefik" "${BIN}/traefik"
log "built ${BIN}/traefik"
echo "${BIN}/traefik"
