#!/usr/bin/env bash
# Builds the control-plane binaries the tests need (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok) from Go modules into a cache
# directory outside the repo, laid out like envtest's KUBEBUILDER_ASSETS.
# No registry ships kube-apiserver, so we build it: a wrapper module requires
# k8s.io/kubernetes and points each staging module at its published v0.X.Y tag.
# Re-running is cheap: a binary already in the cache is never rebuilt.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
BIN="${CACHE}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}/bin"
WORK="${CACHE}/gowork-${K8S_VERSION}"
STAGING_TAG="v0.${K8S_VERSION#v1.}"

need=()
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
  [ -x "${BIN}/${b}" ] || need+=("$b")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "${BIN}"
  exit 0
fi

mkdir -p "${BIN}" "${WORK}"
export GOFLAGS="-mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
log() { echo "[build-k8s] $*" >&2; }

build_kube() {
  local dir="${WORK}/kube"
  mkdir -p "${dir}"
  if [ ! -f "${dir}/go.sum" ]; then
    log "preparing wrapper module for k8s.io/kubernetes ${K8S_VERSION}"
    local gomod
    gomod=$(cd "${WORK}" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module kubetune.local/kube"
      echo
      grep -E '^go [0-9]' "${gomod}"
      echo
      echo "require k8s.io/kubernetes ${K8S_VERSION}"
      echo
      echo "replace ("
      # Each "k8s.io/x => ./staging/src/k8s.io/x" becomes the published tag.
      grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "${gomod}" \
        | awk -v tag="${STAGING_TAG}" '{print "\t" $1 " => " $1 " " tag}'
      echo ")"
    } > "${dir}/go.mod"
    cat > "${dir}/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
    (cd "${dir}" && go mod tidy -e >&2)
  fi
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    if [ ! -x "${BIN}/${b}" ]; then
      log "building ${b} (slow the first time: several minutes per binary on 2 cores)"
      (cd "${dir}" && go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}" -o "${BIN}/${b}.tmp" "k8s.io/kubernetes/cmd/${b}" >&2)
      mv "${BIN}/${b}.tmp" "${BIN}/${b}"
    fi
  done
}

build_etcd() {
  local dir="${WORK}/etcd"
  mkdir -p "${dir}"
  cat > "${dir}/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  [ -f "${dir}/go.mod" ] || (cd "${dir}" && go mod init kubetune.local/etcd >&2)
  (cd "${dir}" && go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2 && go mod tidy >&2)
  log "building etcd ${ETCD_VERSION}"
  (cd "${dir}" && go build -trimpath -ldflags "-s -w" -o "${BIN}/etcd.tmp" . >&2)
  mv "${BIN}/etcd.tmp" "${BIN}/etcd"
}

build_kwok() {
  log "building kwok ${KWOK_VERSION}"
  GOBIN="${BIN}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" >&2
}

[ -x "${BIN}/etcd" ] || build_etcd
[ -x "${BIN}/kwok" ] || build_kwok
build_kube
echo "${BIN}"
