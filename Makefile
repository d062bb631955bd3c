# Every target sets up what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO_STORAGE := examples/storage

.PHONY: setup kit-setup demo test lint bench images release e2e-kind clean

setup:
	@./scripts/setup.sh

demo: setup
	@rm -rf $(DEMO_STORAGE)
	@echo "== first run: every node runs and is stored in $(DEMO_STORAGE) =="
	@$(PY) examples/ml_pipeline.py --storage $(DEMO_STORAGE)
	@echo
	@echo "== second run: results are read back from storage, nothing is recomputed =="
	@$(PY) examples/ml_pipeline.py --storage $(DEMO_STORAGE)

kit-setup:
	@./scripts/setup-docker.sh
	@./scripts/setup-helm.sh

test: setup kit-setup
	@./scripts/setup-rayworkflow.sh
	@$(PY) -m mypy
	@$(PY) -m pytest -q

FF_BASE_IMAGE ?= $(shell docker image inspect functionfuse-local/debian-python:bookworm >/dev/null 2>&1 && echo functionfuse-local/debian-python:bookworm || echo python:3.11-slim)
images: setup kit-setup
	@.venv/bin/functionfuse image build --base-image $(FF_BASE_IMAGE) --wheelhouse build/wheelhouse $(if $(REGISTRY),--push $(REGISTRY))

# make release REGISTRY=host[:port]/namespace: sdist and wheel (dist/), every image pushed to
# REGISTRY/functionfuse, every chart pushed to oci://REGISTRY/charts; what the registry
# already holds is not pushed again. Credentials: $FUNCTIONFUSE_REGISTRY_USERNAME and
# $FUNCTIONFUSE_REGISTRY_PASSWORD, else docker login / helm registry login.
release: setup kit-setup
	@test -n "$(REGISTRY)" || { echo "usage: make release REGISTRY=host[:port]/namespace" >&2; exit 2; }
	@PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/functionfuse release $(REGISTRY) --base-image $(FF_BASE_IMAGE) --wheelhouse build/wheelhouse

e2e-kind: setup
	@./scripts/setup-helm.sh
	@PATH="$(CURDIR)/.venv/bin:$$PATH" FUNCTIONFUSE_E2E_KIND=1 $(PY) -m pytest -q -rs tests/e2e

lint: setup
	@$(PY) -m mypy

bench: setup
	@$(PY) bench/run.py

clean:
	rm -rf .venv $(DEMO_STORAGE) build dist *.egg-info .pytest_cache .mypy_cache .hypothesis
