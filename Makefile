# Every target sets up what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO_STORAGE := examples/storage

.PHONY: setup demo test lint bench clean

setup:
	@./scripts/setup.sh

demo: setup
	@rm -rf $(DEMO_STORAGE)
	@echo "== first run: every node runs and is stored in $(DEMO_STORAGE) =="
	@$(PY) examples/ml_pipeline.py --storage $(DEMO_STORAGE)
	@echo
	@echo "== second run: results are read back from storage, nothing is recomputed =="
	@$(PY) examples/ml_pipeline.py --storage $(DEMO_STORAGE)

test: setup
	@$(PY) -m mypy
	@$(PY) -m pytest -q

lint: setup
	@$(PY) -m mypy

bench: setup
	@$(PY) bench/run.py

clean:
	rm -rf .venv $(DEMO_STORAGE) build dist *.egg-info .pytest_cache .mypy_cache .hypothesis
