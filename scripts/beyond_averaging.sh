#!/usr/bin/env bash
# Issue 19's evidence on the offline demo, whose true test labels are known: teachers in 3 folds, their blends
# under every weighting, a pseudo-labelled run, a distilled student and the same student on labels alone, all
# with the same seeds; then one table (scripts/beyond_averaging.py). About 15 minutes on a 2-core CPU.
# Usage: bash scripts/beyond_averaging.sh [OUT]   (default outputs/beyond)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
py=.venv/bin/python
out=${1:-outputs/beyond}
common=(data=demo "paths.outputs=$out" data.split=kfold data.folds=3 train.seed=0)
student=("+model=effnet_lite0" "model.variants=[{resize: squish, item_size: [32], size: [32]}]")

$py -m pipeline.prepare_demo "paths.outputs=$out" demo.train_per_class=100 demo.test_per_class=30
$py -m pipeline.train -m "${common[@]}" "paths.preds=$out/teachers" +model=effnet_lite0,effnet_lite1
for w in best equal greedy optimize stack; do
  $py -m pipeline.blend data=demo "paths.outputs=$out" "paths.preds=$out/teachers" \
    "blend.weighting=$w" "blend.output=$out/blends/teachers_$w.csv"
done
teacher=$out/blends/teachers_equal.csv  # the reference recipe's blend teaches
$py -m pipeline.train "${common[@]}" "paths.preds=$out/students" "${student[@]}" model.name=student
$py -m pipeline.train "${common[@]}" "paths.preds=$out/students" "${student[@]}" model.name=student \
  loss=distill "loss.teacher=$teacher"
$py -m pipeline.train "${common[@]}" "paths.preds=$out/pseudo" +model=effnet_lite0 \
  "data.pseudo=$teacher" data.pseudo_threshold=0.9
$py scripts/beyond_averaging.py "$out"
