# Two commands do all the set-up: `make run` (the arena) and `make test` (the test suite).
# Both create/refresh .venv with Python 3.11 and install requirements.txt plus the embedded model.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test test-slow test-all venv bench train-reward train-ppo eval clean help

help:
	@echo "make run        start the arena on http://127.0.0.1:7860 (ARGS='--port 8000 ...')"
	@echo "make test       the fast test suite (what CI runs)"
	@echo "make test-slow  the long tests (-m slow)"
	@echo "make bench      benchmark scripts; tables land in bench/RESULTS.md"
	@echo "make train-ppo  PPO-max from SFT against reward-v0 (the shipped rlhf-v0 recipe)"
	@echo "make eval       python -m eval --policies sft rlhf-v0 on the default suites"

venv: $(STAMP)

$(STAMP): requirements.txt scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	@touch $(STAMP)

run: venv
	$(PY) app.py $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/generation.py

# The shipped rlhf-v0: PPO-max from the SFT model against reward-v0 on the seed prompts, seeded.
PPO_V0_ARGS ?= --reward-model reward-v0 --prompts seed --iterations 45 --rollout-batch-size 8 \
	--mini-batch-size 4 --ppo-epochs 2 --response-length 48 --lora-layers 8 --policy-lr 2e-4 \
	--critic-lr 1e-4 --kl-coef 0.05 --ptx-coef 1.0 --ptx-categories all --critic-warmup 2 --eval-every 3 \
	--val-prompts 60 --best-metric val/refusal_margin --seed 0 --dtype bfloat16 --threads 1 \
	--publish-dir rlhf_demo/versions --name rlhf-v0
train-ppo: venv
	$(PY) -m training.ppo $(PPO_V0_ARGS) $(ARGS)

eval: venv
	$(PY) -m eval --policies sft rlhf-v0 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# The shipped default reward model rlhf_demo/versions/reward-v0 (seeded; ~20-25 min on 2 CPU cores).
# Held-out accuracies, the command and the data land in its card.json.
HH_RLHF ?= ../shared/data/hh-rlhf/harmless-base-test-part.jsonl.gz
REWARD_ARGS ?= --data seed --data hh=$(HH_RLHF) --validation-fraction 0.2 --max-length 256 \
	--lora-r 16 --lora-alpha 32 --lora-layers 8 --bf16 --epochs 2 --batch-size 8 --learning-rate 3e-4 \
	--center-rewards-coef 0.01 --seed 0 --num-threads 1
train-reward: venv
	$(PY) -m training.reward_model $(REWARD_ARGS) --publish-dir rlhf_demo/versions --name reward-v0 --replace \
		--description "default reward model: seed pairs + HH-RLHF harmless (make train-reward)" $(ARGS)
