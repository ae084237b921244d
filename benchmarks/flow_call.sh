#!/usr/bin/env bash
# One device call for the flow benchmarks; each argument one job, run one after the other
# (timings never share the GPU). JSON rows and logs go to $OUT. normflows travels as a
# wheel in .whl/ (see ../.library/device/README.md; `carry` names .whl and .data).
#     bash benchmarks/flow_call.sh speed                  # deepgen vs normflows, RealNVP and Glow
#     BUDGET=200 bash benchmarks/flow_call.sh maf glow    # MNIST test bits/dim, BUDGET training seconds each
set -u
export PYTHONPATH=$PWD/src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
B=${BUDGET:-400}
nll="python benchmarks/ar_mnist_nll.py --data-dir .data --device cuda --probe-seconds 20 --time-budget $B --train bf16=true cuda_graph=true schedule=cosine"  # (ends with --train: a job may add trainer settings)
for job in "$@"; do
  case $job in
    speed) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
           PYTHONPATH=$PYTHONPATH:/tmp/site timeout ${SPEED_LIMIT:-400} python benchmarks/flow_speed.py --data-dir .data --device cuda \
             --steps ${STEPS:-100} --warmup 20 --out $OUT/flow_speed.json > $OUT/flow_speed.log 2>&1 ;;
    # lr 1e-4 and clipping: at 1e-3 the MAF diverged within its probe (session 7, RESULTS.md).
    maf) $nll grad_clip=1.0 --model maf --settings layers=5 "hidden=(1024,)" lr=0.0001 --samples $OUT/maf.png --out $OUT/maf.json > $OUT/maf.log 2>&1 ;;
    realnvp) $nll --model realnvp --settings scales=3 couplings=3 channels=64 --samples $OUT/realnvp.png --out $OUT/realnvp.json > $OUT/realnvp.log 2>&1 ;;
    glow) $nll --model glow --settings levels=2 steps=16 channels=256 --samples $OUT/glow.png --out $OUT/glow.json > $OUT/glow.log 2>&1 ;;
    *) echo "unknown job $job"; exit 2 ;;
  esac
done
tail -4 $OUT/flow_speed.log 2>/dev/null
grep -h '"nll_bpd"\|best_epoch\|train_seconds' $OUT/*.json 2>/dev/null
