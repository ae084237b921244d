#!/usr/bin/env bash
# One device call for the flow benchmarks; each argument one job, run one after the other
# (PARALLEL=1: at once, for the bits/dim runs only; timings never share the GPU). JSON rows and logs go to $OUT. normflows travels as a
# wheel in .whl/ (see ../.library/device/README.md; `carry` names .whl and .data).
#     bash benchmarks/flow_call.sh speed                  # deepgen vs normflows, RealNVP and Glow
#     BUDGET=200 bash benchmarks/flow_call.sh maf glow    # MNIST test bits/dim, BUDGET training seconds each
#     BUDGET=540 TOTAL=2160 bash benchmarks/flow_call.sh glow-long      # one schedule over TOTAL seconds, in runs/flow-glow
#     BUDGET=540 bash benchmarks/flow_call.sh glow-resume                # at once on the same warm machine: the next part
#     PARALLEL=1 ... realnvp-long glow-long                              # the jobs at once (each time an upper bound)
#     FAST="bf16=true compile=true cuda_graph=true" ...                  # the trainer's fast path for the long runs
#     SAVE_RUNS=1 ... glow-resume        # runs/ back in $OUT for a later session (benchmarks/README.md)
#     REALNVP_WIDTH=128 GLOW_WIDTH=256 ...                               # the long runs' coupling widths (defaults 64, 256)
#     REALNVP_BLOCKS=4 ...                                               # residual blocks per RealNVP coupling network (default 0)
set -u
export PYTHONPATH=$PWD/src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
B=${BUDGET:-400}
nll="python benchmarks/ar_mnist_nll.py --data-dir .data --device cuda --probe-seconds 20 --time-budget $B --train bf16=true cuda_graph=true schedule=cosine"  # (ends with --train: a job may add trainer settings)
fast=${FAST:-bf16=true cuda_graph=true}
long="python benchmarks/ar_mnist_nll.py --data-dir .data --device cuda --probe-seconds 20 --time-budget $B --total-budget ${TOTAL:-$B}"
run_job() {
  local job=$1
  case $job in
    speed) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
           PYTHONPATH=$PYTHONPATH:/tmp/site timeout ${SPEED_LIMIT:-400} python benchmarks/flow_speed.py --data-dir .data --device cuda \
             --steps ${STEPS:-100} --warmup 20 --out $OUT/flow_speed.json > $OUT/flow_speed.log 2>&1 ;;
    # lr 1e-4 and clipping: at 1e-3 the MAF diverged within its probe (session 7, RESULTS.md).
    maf) $nll grad_clip=1.0 --model maf --settings layers=5 "hidden=(1024,)" lr=0.0001 --samples $OUT/maf.png --out $OUT/maf.json > $OUT/maf.log 2>&1 ;;
    realnvp) $nll --model realnvp --settings scales=3 couplings=3 channels=64 --samples $OUT/realnvp.png --out $OUT/realnvp.json > $OUT/realnvp.log 2>&1 ;;
    glow) $nll --model glow --settings levels=2 steps=16 channels=256 --samples $OUT/glow.png --out $OUT/glow.json > $OUT/glow.log 2>&1 ;;
    # Runs longer than one call (issue 12 allows an hour of training each): the schedule is
    # sized for TOTAL seconds; each call tests the best validation epoch so far.
    realnvp-long) $long --train $fast schedule=cosine --model realnvp --settings scales=3 couplings=3 channels=${REALNVP_WIDTH:-64} blocks=${REALNVP_BLOCKS:-0} \
           --run-dir runs/flow-realnvp --samples $OUT/realnvp.png --out $OUT/realnvp.json > $OUT/realnvp.log 2>&1 ;;
    glow-long) $long --train $fast schedule=cosine --model glow --settings levels=2 steps=16 channels=${GLOW_WIDTH:-256} \
           --run-dir runs/flow-glow --samples $OUT/glow.png --out $OUT/glow.json > $OUT/glow.log 2>&1 ;;
    realnvp-resume|glow-resume) m=${job%-resume}; python benchmarks/ar_mnist_nll.py --model $m --resume --run-dir runs/flow-$m \
           --time-budget $B --data-dir .data --device cuda --samples $OUT/$m.png --out $OUT/$m.json > $OUT/$m.log 2>&1 ;;
  esac
}
JOBS=" speed maf realnvp glow realnvp-long glow-long realnvp-resume glow-resume "
source benchmarks/jobs.sh
check_jobs "$@"
restore_runs
run_jobs "$@"
if [ -n "${SAVE_RUNS:-}" ]; then save_runs $OUT/*.log $OUT/*.png; fi
tail -4 $OUT/flow_speed.log 2>/dev/null
grep -h '"nll_bpd"\|best_epoch\|train_seconds' $OUT/*.json 2>/dev/null
