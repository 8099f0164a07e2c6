# Everything runs from a venv outside the repo (hack/bootstrap.sh) and
# control-plane binaries built once into ~/.cache/kubetune (hack/build-k8s.sh).
SHELL := /bin/bash
VENV = $(shell bash hack/bootstrap.sh)

.PHONY: quickstart test test-unit crds check-crds k8s-binaries tools venv clean-cache lint-chart wheel

## The main job: a real LoRA fine-tune of SmolLM2-135M-Instruct on this machine.
quickstart:
	$(VENV)/bin/kubetune train -f manifests/examples/quickstart.yaml

## Every test tier but gpu, installing and building what they need first.
test:
	bash hack/test.sh

test-unit:
	bash hack/test.sh -m unit

crds:
	$(VENV)/bin/kubetune crds --out crds

check-crds:
	$(VENV)/bin/kubetune crds --out crds --check

## The chart against its values schema (docs/install.md); tests/unit/test_chart_schema.py runs it too.
lint-chart:
	"$$(bash hack/tools.sh)/helm" lint --strict helm/kubetune

## The wheel both images install, into dist/ (tests/support/wheel_venvs.py builds the same one).
## build/ goes first: setuptools would otherwise package modules deleted since the last build.
wheel:
	rm -rf build dist/kubetune-*.whl
	$(VENV)/bin/python -m pip wheel --no-deps --no-build-isolation -w dist .

k8s-binaries:
	bash hack/build-k8s.sh

tools:
	bash hack/tools.sh

venv:
	bash hack/bootstrap.sh

clean-cache:
	rm -rf $${KUBETUNE_CACHE:-$$HOME/.cache/kubetune}
