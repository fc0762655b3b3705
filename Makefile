# `make test` and `make demo` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines take the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
DATA      ?= $(or $(GPTSCALE_DATA),../shared/data)
NPROC     ?= 2
PORT      ?= 29533
# The `deepspeed` runner of `make demo` and its ranks import DeepSpeed before any gptscale code runs, so only
# the environment can silence its per-process "Setting accelerator to CPU" warning; the rule (cpu where
# nvidia-smi is missing) is gptscale/runtime/dist.py's env_defaults, which Slurm jobs get from there.
ifeq ($(shell command -v nvidia-smi),)
export DS_ACCELERATOR ?= cpu
endif
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup test test-fast demo bench bench-transfer clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet $(TORCH_CPU); fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q --timeout=1500 --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

demo: setup
	test -d $(DATA)/corpus/gutenberg || { echo "make demo: $(DATA)/corpus/gutenberg not found; pass DATA=<shared data folder>"; exit 1; }
	$(VENV)/bin/gptscale tokenizer train --input $(DATA)/corpus/gutenberg --vocab-size 8000 --out runs/demo/tok --gutenberg
	$(VENV)/bin/gptscale shard --input $(DATA)/corpus/gutenberg --tokenizer runs/demo/tok --out runs/demo/shards \
		--seq-len 256 --val-fraction 0.01 --gutenberg
	rm -rf runs/demo/run
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) --master_port $(PORT) gptscale/pretrain.py --config gptscale/configs/demo.yaml
	$(VENV)/bin/gptscale export runs/demo/run --out runs/demo/hf --overwrite --verify
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) --master_port $(PORT) gptscale/finetune.py --task rte --init runs/demo/run \
		--data-dir $(DATA) --train.run_dir=runs/demo/rte --train.precision=fp32 --finetune.micro_batch_size=8 \
		--finetune.epochs=2
	$(VENV)/bin/gptscale predict --model runs/demo/rte/model --text "A man is playing a guitar on stage." \
		--text-pair "A musician is performing."
	@echo "RTE dev metrics: runs/demo/rte/metrics.json; predictions: runs/demo/rte/predictions_dev.tsv;" \
		"GLUE submission: runs/demo/rte/submission/RTE.tsv; fine-tuned model: runs/demo/rte/model"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir runs/demo/run/tb"
	@echo "Hugging Face export: runs/demo/hf (transformers.AutoModelForCausalLM.from_pretrained('runs/demo/hf'))"

bench: setup
	$(PY) bench/model_speed.py
	$(PY) bench/data.py
	$(PY) bench/engine_overhead.py

bench-transfer: setup  # ~17 min on 2 idle CPU cores: pre-train, then SST-2 / RTE pre-trained vs scratch
	$(PY) bench/transfer.py --data $(DATA)

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
