#!/usr/bin/env bash
# The CPU-scale study of docs/results/study.md, protocol of issue 17, end to end: the synthetic
# world where fusion must combine (jobs/configs/study-synthetic.yaml), URG, PairRanker and GenFuser
# (LLM-Blender) with 3 seeds and the two ablations with seed 0, every one trained on the same records
# for the same steps (jobs/configs/study.yaml), then one evaluation per seed on the same 500 test
# records (bounds, k=1, robustness, paired bootstrap) and a summary over seeds; last, two more
# rankers (seed 0), trained the same way and evaluated with seed 0's PairRanker into RESULTS/rankers.
#
#   bash jobs/study.sh        # does what is left: finished runs are skipped, an unfinished one resumes
#
# Each training run is capped at STUDY_CAP (default 2h): a run stopped there keeps its checkpoints
# (every 500 steps) and the script exits 75; run it again to resume that run by its name
# (train.name=study2-NAME) and go on. Knobs: STUDY_ONLY="urg-s0 gen_fuser-s0" (those runs only, no
# evaluation), STUDY_SEEDS ("0 1 2"), STUDY_OUT (outputs/study2), RESULTS (docs/results/study),
# STUDY_DRY_RUN=1 (print every command, run none), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=jobs/configs/study.yaml
WORLD=jobs/configs/study-synthetic.yaml
OUT=${STUDY_OUT:-outputs/study2}
RESULTS=${RESULTS:-docs/results/study}
SEEDS=${STUDY_SEEDS:-0 1 2}
CAP=${STUDY_CAP:-2h}
PYTHON=${PYTHON:-python}
DRY=${STUDY_DRY_RUN:-}

run() {  # a command, or its text with STUDY_DRY_RUN
  if [ -n "$DRY" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

test_file=$("$PYTHON" -c "from urg_ray.config import load_config; print(load_config('$CONFIG').data.test_file)")
if [ -n "$DRY" ] || [ ! -f "${test_file%.jsonl}.facts.jsonl" ]; then
  run "$PYTHON" jobs/make_data.py --config "$CONFIG" --synthetic "$WORLD"
fi

train() {  # NAME, then --set overrides of the method, seed or ablation
  local name=$1; shift
  if [ -n "${STUDY_ONLY:-}" ] && [[ " $STUDY_ONLY " != *" $name "* ]]; then return; fi
  if [ -z "$DRY" ] && [ -f "$OUT/$name/train_summary.json" ]; then echo "[study] $name: done"; return; fi
  local cmd=(timeout --kill-after=10m "$CAP" "$PYTHON" jobs/train.py --config "$CONFIG"
             --set "train.name=study2-$name" "$@" --out "$OUT/$name")
  if [ -n "$DRY" ]; then run "${cmd[@]}"; return; fi
  mkdir -p "$OUT"
  echo "[study] $name: ${cmd[*]}"
  local rc=0
  "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.log" || rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "[study] $name stopped at the $CAP cap; run jobs/study.sh again to resume it"; exit 75
  fi
  [ "$rc" = 0 ] || { echo "[study] $name failed (exit $rc); see $OUT/$name.log"; exit "$rc"; }
}

PAIRED=(--paired "URG=PairRanker-Gen" --paired "URG=URG (k=1)" --paired "URG-rank=PairRanker")  # per seed, pooled
RANKER=(--set train.lr=5e-4)  # a guess for random-init DeBERTa (not tuned), as in the old study
for seed in $SEEDS; do  # seed by seed, so that a partial study is already one whole comparison
  train "urg-s$seed"         --set "train.seed=$seed"
  train "pair_ranker-s$seed" --set method=pair_ranker "${RANKER[@]}" --set "train.seed=$seed"
  train "gen_fuser-s$seed"   --set method=gen_fuser --set "train.seed=$seed"
  if [ "$seed" = 0 ]; then  # Table 3's ablations: seed 0 only
    train urg-no-rank --set loss.rank_loss=false
    train urg-no-erm  --set loss.erm=false
  fi
done
evaluated() {  # FOLDER: an evaluation already written is skipped
  if [ -z "$DRY" ] && [ -f "$1/eval_records.json" ]; then echo "[study] $1: evaluated"; return 0; fi
  return 1
}

if [ -z "${STUDY_ONLY:-}" ]; then  # the issue's comparison is evaluated before Table 2's other rankers train
  folders=()
  for seed in $SEEDS; do
    folders+=("$RESULTS/seed$seed")
    extra=()
    if [ "$seed" = 0 ]; then
      extra=(--urg "URG w/o ranking loss=$OUT/urg-no-rank/model" --urg "URG w/o ERM=$OUT/urg-no-erm/model")
    fi
    evaluated "$RESULTS/seed$seed" && continue
    run "$PYTHON" jobs/evaluate.py --config "$CONFIG" --bounds --synthetic "$WORLD" --robustness \
      --out "$RESULTS/seed$seed" \
      --urg "URG=$OUT/urg-s$seed/model" --ranker "PairRanker=$OUT/pair_ranker-s$seed/model" \
      --fuser "GenFuser=$OUT/gen_fuser-s$seed/model" "${extra[@]}" "${PAIRED[@]}"
  done
  run "$PYTHON" jobs/evaluate.py --summarize "${folders[@]}" --out "$RESULTS" "${PAIRED[@]}"
fi

if [[ " $SEEDS " == *" 0 "* ]]; then  # Table 2's other rankers (seed 0), beside seed 0's PairRanker
  train summa_reranker --set method=summa_reranker "${RANKER[@]}"
  train simcls         --set method=simcls "${RANKER[@]}"
  if [ -z "${STUDY_ONLY:-}" ] && ! evaluated "$RESULTS/rankers"; then
    run "$PYTHON" jobs/evaluate.py --config "$CONFIG" --out "$RESULTS/rankers" \
      --ranker "PairRanker=$OUT/pair_ranker-s0/model" --ranker "SummaReranker=$OUT/summa_reranker/model" \
      --ranker "SimCLS=$OUT/simcls/model" --paired "SummaReranker=PairRanker" --paired "SimCLS=PairRanker"
  fi
fi
