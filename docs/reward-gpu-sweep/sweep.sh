#!/usr/bin/env bash
# One scalar reward model with more capacity: does it pass issue 12's reward bars where the CPU candidates
# (LoRA on the top 8 layers, docs/reward-v1/README.md "one scalar head") did not? For a GPU (~5 min on an
# H200 by estimate, not measured; the variants in parallel); every number is on validation data only (in-run held-out seed pairs,
# pairs/hh_heldout.jsonl, pairs/heldout_val.jsonl, pairs/contrast_val.jsonl). XSTest is not touched here.
#
#   bash docs/reward-gpu-sweep/sweep.sh OUT_DIR [MAX_STEPS]     # MAX_STEPS: a smoke test on a CPU
#
# Each variant trains from the SFT base (no reward-v0 adapter) with LoRA on every layer, is published into
# the data dir's registry as cand-<name>, and is scored by the project's own commands.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,10p' "$0"; exit 0;; esac
cd "$(dirname "$0")/../.."
OUT_DIR=${1:?OUT_DIR}
MAX=${2:-}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PARALLEL=${PARALLEL:-1}   # 0: one variant after another (a CPU smoke test: four at once need > 24 GiB)
PAIRS=rlhf_demo/data/pairs
HH=rlhf_demo/data/external/hh-rlhf/harmless-base-test-part.jsonl.gz
mkdir -p "$OUT_DIR"
COMMON=(--data seed --data "hh=$HH:800" --data "built=$PAIRS/train.jsonl" --validation-fraction 0.2
        --max-length 256 --bf16 --batch-size 16 --center-rewards-coef 0.01 --seed 0 --lora-layers 0
        --no-progress --device "$DEVICE" --dtype bfloat16 --threads 2)
[ -n "$MAX" ] && COMMON+=(--max-steps "$MAX")
variant() {  # name, then the flags that differ
  local name=$1; shift
  {
    echo "== cand-$name: $*"
    "$PY" -m training.reward_model "${COMMON[@]}" "$@" --run-dir "$OUT_DIR/run-$name" --name "cand-$name" \
      --description "GPU sweep variant $name: $*"
    "$PY" -m training.reward_model --eval-only --reward-model "cand-$name" --bf16 --device "$DEVICE" --threads 2 \
      --data "hh_heldout=$PAIRS/hh_heldout.jsonl" --data "heldout=$PAIRS/heldout_val.jsonl" --no-progress
    "$PY" -m training.contrast --reward-model "cand-$name" --pairs "$PAIRS/contrast_val.jsonl" --device "$DEVICE" \
      --threads 2 --out "$OUT_DIR/contrast_val_$name.json"
  } > "$OUT_DIR/$name.log" 2>&1
  echo "cand-$name rc=$? ($(date -u +%T))"
}
ONLY=${ONLY:-}            # a smoke test: run only the variant of this name
each() { [ -n "$ONLY" ] && [ "$1" != "$ONLY" ] && return 0; if [ "$PARALLEL" = 1 ]; then variant "$@" & else variant "$@"; fi; }
each r16-e2 --lora-r 16 --lora-alpha 32 --learning-rate 2e-4 --epochs 2
each r64-e3 --lora-r 64 --lora-alpha 128 --learning-rate 2e-4 --epochs 3
each r128-e4 --lora-r 128 --lora-alpha 256 --learning-rate 1e-4 --epochs 4
each r64-e3-lr5e-5 --lora-r 64 --lora-alpha 128 --learning-rate 5e-5 --epochs 3
wait
grep -h "accuracy\|wins" "$OUT_DIR"/*.log | head -200 > "$OUT_DIR/summary.txt"
