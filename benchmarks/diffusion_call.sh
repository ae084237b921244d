#!/usr/bin/env bash
# Device calls for the diffusion benchmarks; each argument one job, one after the other.
# diffusers travels as wheels in .whl/ (diffusers, importlib_metadata; `carry` names .whl
# and .data). JSON records, logs and sample grids go to $OUT.
#     bash benchmarks/diffusion_call.sh speed                     # deepgen vs diffusers, training and sampling
#     BATCHES=128 SAMPLE_MODES=compile TAG=-128 bash benchmarks/diffusion_call.sh speed   # a part (BATCHES="": sampling only)
#     BUDGET=480 bash benchmarks/diffusion_call.sh mnist          # train, then FID against steps (10,000 samples each)
#     BUDGET=480 bash benchmarks/diffusion_call.sh mnist-resume   # at once, on the same warm machine: train on, score again
#     bash benchmarks/diffusion_call.sh mnist-eval                # at once: the rest of the FID table, no training
#     GRID=ddim:1000:0,ddim:1000:1 TAG=-1000 bash benchmarks/diffusion_call.sh mnist-eval
set -u
export PYTHONPATH=$PWD/src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
B=${BUDGET:-480}
quality="python benchmarks/diffusion_quality.py --data-dir .data --device cuda --pictures $OUT"
for job in "$@"; do
  case $job in
    speed) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
           PYTHONPATH=$PYTHONPATH:/tmp/site timeout ${SPEED_LIMIT:-500} python benchmarks/diffusion_speed.py --data-dir .data --device cuda \
             --batches "${BATCHES-128,1024}" --sample-modes "${SAMPLE_MODES:-eager,bf16,compile,compile_cl}" \
             --out $OUT/diffusion_speed${TAG:-}.json > $OUT/diffusion_speed${TAG:-}.log 2>&1 ;;
    mnist|fashion-mnist) $quality --dataset $job --time-budget $B --train bf16=true cuda_graph=true --run-dir runs/ddpm-$job \
           --grid "${GRID:-ddim:10:0,ddim:20:0,ddim:50:0,dpm-solver++:10:0,dpm-solver++:20:0}" --out $OUT/ddpm_$job.json > $OUT/ddpm_$job.log 2>&1 ;;
    mnist-resume|fashion-mnist-resume) d=${job%-resume}; $quality --dataset $d --resume --time-budget $B --run-dir runs/ddpm-$d \
           ${GRID:+--grid $GRID} --bound-stride ${STRIDE:-10} --out $OUT/ddpm_$d.json > $OUT/ddpm_$d.log 2>&1 ;;
    # No more training: the rest of the table on the same warm machine, e.g.
    # GRID=ddim:1000:0,ddim:1000:1 (about 4.3 min each with fast sampling).
    mnist-eval|fashion-mnist-eval) d=${job%-eval}; $quality --dataset $d --resume --time-budget 0 --run-dir runs/ddpm-$d \
           --grid "${GRID:-ddim:100:0,ddim:10:1,ddim:20:1,ddim:50:1,ddim:100:1}" ${GUIDANCE:+--guidance $GUIDANCE} \
           --out $OUT/ddpm_${d}_eval${TAG:-}.json > $OUT/ddpm_${d}_eval${TAG:-}.log 2>&1 ;;
    *) echo "unknown job $job"; exit 2 ;;
  esac
done
tail -8 $OUT/*.log 2>/dev/null
