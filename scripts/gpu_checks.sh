#!/usr/bin/env bash
# The checks of ../shared/gpu-checklist.md in one command on a CUDA machine with no network: the training
# tests on CUDA, the memory probe at lesson 7's models and sizes, the benchmark of vit_large at 224 (every
# core, then two as on Kaggle) with the GPU's utilisation, and a real out-of-memory retried at a doubled accum.
# Random weights (no hub). Each check has its own time limit and log; one failing does not stop the others.
# Usage: bash scripts/gpu_checks.sh OUT_DIR   (the 30 Paddy photos in ../shared/paddy-sample)
# GPU_CHECKS="tests probes" runs some: tests probes bench_all bench_2 bench_eager_aug oom (default all but eager_aug).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=0
py=${PYTHON:-python3}
work=${GPU_CHECKS_WORK:-/tmp/gpu-checks}
data=$work/data/bench-paddy-1320
common=("paths.outputs=$work/outputs" "paths.data=$work/data" "paths.preds=$work/preds")

step() { # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, print the exit status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())" \
    >>"$out/summary.txt" 2>&1
# the CUDA context alone, as torch.cuda.list_gpu_processes counts it (lesson 7's figures include it)
"$py" -c "import torch; torch.zeros(1, device='cuda'); print(torch.cuda.list_gpu_processes())" \
    >"$out/context.txt" 2>&1
"$py" -c "
from pathlib import Path
from pipeline.benchmark import replicate_sample
replicate_sample(Path('../shared/paddy-sample'), Path('$data'), 1320, 100)" >"$out/data.log" 2>&1

checks() { # the training tests on CUDA (in the background: the probes beside them read their own peak)
    local tests=(tests/test_model_files.py tests/test_accumulation.py tests/test_train_integration.py
        tests/test_recipe_training.py tests/test_data_paths.py tests/test_teachers.py tests/test_resilience.py
        tests/test_processes.py)
    step tests 180 "$py" -m pytest -n 6 -p no:cacheprovider -q "${tests[@]}" &
}

probes() { # memory at lesson 7's settings: convnext_small 128 px at accum 1, 2 and 4 (a budget nothing fits,
    # so all three are measured); the large models at accum 2
    local probe=("${common[@]}" "data.root=$data" model.pretrained=false probe.steps=3)
    step probe_convnext_small 75 "$py" -m pipeline.probe +model=convnext_small "${probe[@]}" \
        "probe.accums=[1,2,4]" probe.budget_gb=0.01
    for m in vit_large swinv2_large convnext_large swin_large; do
        step "probe_$m" 75 "$py" -m pipeline.probe "+model=$m" "${probe[@]}" train.variant=0 "probe.accums=[2]"
    done
}

bench() { # bench NAME REPEATS [CPU list] [option...]: reference vs pipeline vs compute-only limit, fp16, with
    # the GPU's utilisation and memory sampled every 200 ms
    local name=$1 repeats=$2 cpus=$3
    shift 3
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$out/util_$name.csv" &
    local util=$!
    step "bench_$name" 130 taskset -c "$cpus" "$py" -m pipeline.bench "${common[@]}" bench.arch=vit_large_patch16_224 \
        bench.pretrained=false bench.item_size=480 bench.size=224 bench.batch_size=64 bench.accum=2 \
        bench.images=1320 bench.epochs=2 "bench.repeats=$repeats" "$@"
    kill $util
}

oom() { # a micro-batch far too large for the card (vit_large at 224, 1024 images, about 190 GB): out of
    # memory, then the retry at a doubled accum finishes the run
    step oom 150 "$py" -m pipeline.train +model=vit_large "${common[@]}" "data.root=$data" model.pretrained=false \
        train.variant=0 train.epochs=1 model.batch_size=1024 train.accum=1 tta.n=1
}

all_cpus=0-$(($(nproc) - 1))
for check in ${GPU_CHECKS:-tests probes bench_all bench_2 oom}; do
    case $check in
    tests) checks ;;
    probes) probes ;;
    bench_all) wait; bench all_cores 2 "$all_cpus" ;;
    bench_2) wait; bench 2_cores 1 0,1 ;;  # the 2 CPU cores of a Kaggle notebook
    bench_eager_aug) wait; bench eager_aug 1 "$all_cpus" perf.fused_augment=false ;;
    oom) wait; oom ;;
    *) echo "unknown check $check" >&2; exit 2 ;;
    esac
done
wait
for f in "$out"/util_*.csv; do
    [[ -e $f ]] || continue
    awk -F', ' -v f="$(basename "$f")" '$1 > 0 {n++; s += $1; if ($2 > m) m = $2}
        END {printf "%s: %d busy samples, mean utilisation %.0f%%, peak memory %d MiB\n", f, n, n ? s / n : 0, m}' \
        "$f" | tee -a "$out/summary.txt"
done
