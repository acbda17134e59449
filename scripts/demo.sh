#!/usr/bin/env bash
# The whole pipeline on the offline demo: set-up, demo data and weights, three runs, blend, submission.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

py=.venv/bin/python
preds=outputs/demo/preds
$py -m pipeline.prepare_demo
$py -m pipeline.train -m data=demo paths.preds=$preds +model=effnet_lite0,effnet_lite1,effnet_lite2
$py -m pipeline.blend data=demo paths.preds=$preds blend.output=outputs/demo/submission.csv
