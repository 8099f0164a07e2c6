#!/usr/bin/env bash
# Builds the operator and trainer images from the repo's Dockerfiles, unmodified, with Debian's
# podman/buildah/runc (this machine has no Docker engine and no registry) and prints, one per line:
#   containers_conf=<path>   the containers.conf every podman/buildah call here must use
#   operator=<image>         built from Dockerfile.operator
#   trainer=<image>          built from Dockerfile.trainer
# Logs go to stderr. Prepared once and cached under $KUBETUNE_CACHE/images (like the Kubernetes
# binaries): the packages, the containers.conf and the stand-in base `python:3.11-slim` (debootstrap:
# Docker Hub is not reachable). The builds use buildah's layer cache, so a code-only change rebuilds
# only the code layers, never torch. Facts and workarounds: ../shared/notes/images.md, docs/images.md.
# KUBETUNE_WHEELHOUSE (default $KUBETUNE_CACHE/wheelhouse when it has torch) is mounted into the
# trainer build and passed as the WHEELHOUSE build arg: its dependencies then install offline.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
DIR="${CACHE}/images"
BASE="docker.io/library/python:3.11-slim"
OPERATOR_IMAGE="${KUBETUNE_OPERATOR_IMAGE:-localhost/kubetune-operator:dev}"
TRAINER_IMAGE="${KUBETUNE_TRAINER_IMAGE:-localhost/kubetune-trainer:dev}"
WHEELHOUSE="${KUBETUNE_WHEELHOUSE:-${CACHE}/wheelhouse}"
log() { echo "[images] $*" >&2; }

mkdir -p "${DIR}"
exec 9>"${DIR}/.lock"
flock 9   # a second caller waits for the first build instead of racing it

# 1. The toolchain (Debian bookworm's packages).
if ! command -v podman >/dev/null || ! command -v buildah >/dev/null || ! command -v runc >/dev/null \
   || ! command -v debootstrap >/dev/null; then
  log "installing podman buildah runc debootstrap (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    podman buildah runc debootstrap uidmap >&2
fi

# 2. crun fails here ("cgroups in hybrid mode not supported") and podman's default ulimits need
# CAP_SYS_RESOURCE, which this machine's root lacks.
CONF="${DIR}/containers.conf"
cat > "${CONF}.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
mv "${CONF}.tmp" "${CONF}"
export CONTAINERS_CONF="${CONF}"

# 3. The stand-in for python:3.11-slim: Debian bookworm's Python 3.11, laid out like the upstream
# image (python, python3, pip under /usr/local/bin; pip allowed to install system-wide).
if ! podman image exists "${BASE}"; then
  log "building the stand-in base ${BASE} (debootstrap, ~2 min)"
  rootfs="$(mktemp -d "${DIR}/rootfs.XXXXXX")"
  cleanup() { umount "${rootfs}/proc" 2>/dev/null || true; rm -rf "${rootfs}"; }
  trap cleanup EXIT
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  debootstrap --variant=minbase bookworm "${rootfs}" "${mirror:-http://deb.debian.org/debian}" >&2
  mount -t proc proc "${rootfs}/proc"
  chroot "${rootfs}" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -ec '
    apt-get update
    apt-get install -y --no-install-recommends python3.11 python3-venv python3-pip ca-certificates
    rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3.11 /usr/local/bin/python
    ln -sf /usr/bin/python3.11 /usr/local/bin/python3
    for p in pip pip3; do printf "#!/bin/sh\nexec /usr/bin/python3.11 -m pip \"\$@\"\n" > /usr/local/bin/$p; chmod 755 /usr/local/bin/$p; done' >&2
  umount "${rootfs}/proc"
  tar -C "${rootfs}" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "${BASE}" >&2
  cleanup
  trap - EXIT
fi

# 4. The images. pip inside a build reaches the package index only over the host's network with
# the host's pip.conf and CA bundle.
build() {
  local dockerfile="$1" image="$2"; shift 2
  local start; start=$(date +%s)
  buildah bud --pull=never --layers --network host \
    -v /etc/pip.conf:/etc/pip.conf:ro -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    "$@" -f "${dockerfile}" -t "${image}" . >&2
  log "${image} from ${dockerfile}: $(( $(date +%s) - start )) s"
}
build Dockerfile.operator "${OPERATOR_IMAGE}"
trainer_args=()
if ls "${WHEELHOUSE}"/torch-*.whl >/dev/null 2>&1; then
  # The build installs offline from the wheelhouse, so it must hold every current requirement: after
  # a dependency change in pyproject.toml, pip fetches what is missing (once; a stamp remembers).
  reqs="${DIR}/trainer-requirements.txt"
  python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["trainer"]))' pyproject.toml > "${reqs}"
  if ! cmp -s "${reqs}" "${WHEELHOUSE}/.trainer-requirements"; then
    log "fetching changed trainer requirements into ${WHEELHOUSE}"
    mkdir -p "${CACHE}/wheel-venvs"
    ( flock 8; python3 -m pip download -q --disable-pip-version-check -d "${WHEELHOUSE}" -r "${reqs}" >&2 ) \
      8>"${CACHE}/wheel-venvs/wheelhouse.lock"  # the lock tests/support/wheel_venvs.py takes
    cp "${reqs}" "${WHEELHOUSE}/.trainer-requirements"
  fi
  trainer_args=(-v "${WHEELHOUSE}:/wheelhouse:ro" --build-arg WHEELHOUSE=/wheelhouse)
fi
build Dockerfile.trainer "${TRAINER_IMAGE}" "${trainer_args[@]}"

echo "containers_conf=${CONF}"
echo "operator=${OPERATOR_IMAGE}"
echo "trainer=${TRAINER_IMAGE}"
