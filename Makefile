# The two commands of the README:
#   make repro   install, then run the whole pipeline (dvc repro) on the embedded phantom data
#   make test    install, then lint and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install repro test lint bench pr-report leaderboard gpu-check scale known-answer profile sweep

BASE ?= main
PR_REPORT_ARGS ?=

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps quantus
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

lint: install
	ruff check .
	ruff format --check cxr_core stages benchmarks tests

test: lint
	pytest -q

# the long phantom run (configs/known-answer.yaml; about 65 min on 2 CPU cores) as a DVC experiment in a
# temporary workspace: prints each model's verdict and exits 1 unless all six pass (README: "The known answer")
known-answer: install
	cxr known-answer

# where `dvc repro` spends its time, stage by stage (forces every stage; results come out unchanged)
profile: install
	python -m benchmarks stages

# dvc exp show as a leaderboard: experiment, lr and each model's test macro AUC (about 190 columns)
leaderboard: install
	cxr leaderboard

# params.yaml's models x seeds (and SWEEP_ARGS, e.g. "-S lr=0.0005,0.001 --format slurm") as one
# `dvc exp run` + `dvc exp push` job per line, for a job runner: docs/scale.md
SWEEP_ARGS ?=
sweep: install
	cxr sweep $(SWEEP_ARGS)

bench: install
	python -m benchmarks all --quick

# on a CUDA machine, under 8 minutes: train images/s fp32 vs bf16 + channels_last, compile, one phantom epoch
gpu-check: install
	python -m benchmarks gpu-check

# every stage of dvc.yaml after preprocess at NIH's full size, tiny probe models (time and memory at 10/50/100%): docs/scale-check.md
scale: install
	python -m benchmarks scale

# Markdown + PNG report of what changed against BASE (metrics, params, plots): docs/pr-report.md
pr-report: install
	python -m cxr_core.devtools.pr_report --base $(BASE) --out pr-report $(PR_REPORT_ARGS)
