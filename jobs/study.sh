#!/usr/bin/env bash
# The CPU-scale study of docs/results/study.md (issue 8), end to end (~2 h on 2 cores):
# synthetic data, three URG variants and four baselines (one at a time), then one table.
#   bash jobs/study.sh            # everything;  STUDY_ONLY="urg simcls" bash jobs/study.sh: some models
#   STUDY_PART=long bash jobs/study.sh   # the longer schedule: URG and GenFuser, 4000 steps (~1 h 10 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=jobs/configs/study.yaml
RESULTS=${RESULTS:-docs/results}

[ -f data/study/test.jsonl ] || python jobs/make_data.py --config "$CONFIG" --set data.n_train=16000

train() {  # NAME, then --set overrides
  local name=$1; shift
  if [ -n "${STUDY_ONLY:-}" ] && [[ " $STUDY_ONLY " != *" $name "* ]]; then return; fi
  python jobs/train.py --config "$CONFIG" --set "train.name=study-$name" "$@" --out "outputs/study/$name" \
    2>&1 | tee "outputs/study/$name.log"
}
mkdir -p outputs/study
if [ "${STUDY_PART:-}" = long ]; then  # same config, 4000 steps instead of 1500
  train urg-4000       --set train.max_steps=4000
  train gen_fuser-4000 --set method=gen_fuser --set train.max_steps=4000
  python jobs/evaluate.py --config "$CONFIG" --robustness --out "$RESULTS/long" \
    --urg "URG (1500 steps)"=outputs/study/urg/model \
    --urg "URG (4000 steps)"=outputs/study/urg-4000/model \
    --ranker PairRanker=outputs/study/pair_ranker/model \
    --fuser "GenFuser (4000 steps)"=outputs/study/gen_fuser-4000/model
  exit 0
fi
train urg
train urg-no-rank   --set loss.rank_loss=false
train urg-no-erm    --set loss.erm=false
# rankers: 5e-4 is a guess for random-init DeBERTa (not tuned; 1e-3 not tried)
train pair_ranker   --set method=pair_ranker    --set train.lr=5e-4 --set train.max_steps=1000
train summa_reranker --set method=summa_reranker --set train.lr=5e-4 --set train.max_steps=1000
train simcls        --set method=simcls         --set train.lr=5e-4 --set train.max_steps=1000
train gen_fuser     --set method=gen_fuser

python jobs/evaluate.py --config "$CONFIG" --robustness --out "$RESULTS" \
  --urg URG=outputs/study/urg/model \
  --urg "URG w/o ranking loss"=outputs/study/urg-no-rank/model \
  --urg "URG w/o ERM"=outputs/study/urg-no-erm/model \
  --ranker PairRanker=outputs/study/pair_ranker/model \
  --ranker SummaReranker=outputs/study/summa_reranker/model \
  --ranker SimCLS=outputs/study/simcls/model \
  --fuser GenFuser=outputs/study/gen_fuser/model
