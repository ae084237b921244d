#!/usr/bin/env bash
# Device calls for the diffusion benchmarks; each argument one job, one after the other.
# diffusers travels as wheels in .whl/ (diffusers, importlib_metadata; `carry` names .whl
# and .data). JSON records, logs and sample grids (a folder per job) are packed into one
# archive per invocation, $OUT/diffusion-<jobs><RUN><TAG>.tar.gz (the device returns at most
# eight files; two invocations in one call get two archives).
#     bash benchmarks/diffusion_call.sh speed                     # deepgen vs diffusers, training and sampling
#     BATCHES=128 SAMPLE_MODES=compile TAG=-128 bash benchmarks/diffusion_call.sh speed   # a part (BATCHES="": sampling only)
#     SPEED_ARGS="--autotune --profile --sample-settings channels=32" ... speed            # more of diffusion_speed.py's options
#     BATCHES=128 SAMPLE_MODES=compile_cl TAG=-nolayout SPEED_ARGS="--inductor layout_optimization=False" bash benchmarks/diffusion_call.sh speed
#     BUDGET=480 bash benchmarks/diffusion_call.sh mnist          # train, then FID against steps (10,000 samples each)
#     BUDGET=480 bash benchmarks/diffusion_call.sh mnist-resume   # at once, on the same warm machine: train on, score again
#     bash benchmarks/diffusion_call.sh mnist-eval                # at once: the rest of the FID table, no training
#     GRID=ddim:1000:0,ddim:1000:1 TAG=-1000 bash benchmarks/diffusion_call.sh mnist-eval
#     BUDGET=420 bash benchmarks/diffusion_call.sh mnist-guided      # conditional: FID and accuracy at guidance 0, 1, 2, 4
#     bash benchmarks/diffusion_call.sh bench                     # the leaderboard's ddpm row (25 s, as the other presets)
#     PARALLEL=1 BUDGET=420 bash benchmarks/diffusion_call.sh mnist fashion-mnist mnist-guided   # the jobs at once, sharing the GPU
#     SETTINGS="channels=32" RUN=-c32 BUDGET=420 bash benchmarks/diffusion_call.sh mnist  # another network, its own run folder
#     BOUND=1 BOUND_LIMIT=2000 GRID=ddim:50:0 bash benchmarks/diffusion_call.sh mnist-eval # the bits/dim bound, every timestep
#     GRID=table BOUND=1 BOUND_LIMIT=1000 BUDGET=170 bash benchmarks/diffusion_call.sh mnist # train, then the whole table but
#                                                                 # its 1000-step rows (GRID=table: $TABLE below), and the bound
# With PARALLEL=1 the processes share the GPU's time: each training time is an upper bound
# on what that run needs alone (quality runs only; never for the speed job).
set -u
export PYTHONPATH=$PWD/src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
B=${BUDGET:-480}
quality="python benchmarks/diffusion_quality.py --data-dir .data --device cuda"
# The DDIM paper's Table 1 in spirit, but its 1000-step rows (about 4 minutes each alone).
TABLE=ddim:10:0,ddim:20:0,ddim:50:0,ddim:100:0,ddim:10:1,ddim:20:1,ddim:50:1,ddim:100:1,dpm-solver++:10:0,dpm-solver++:20:0
[ "${GRID:-}" = table ] && GRID=$TABLE
run_job() {
  local job=$1
  local pics="--pictures $W/pictures-$job${RUN:-}${TAG:-}"
  case $job in
    speed) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
           PYTHONPATH=$PYTHONPATH:/tmp/site timeout ${SPEED_LIMIT:-500} python benchmarks/diffusion_speed.py --data-dir .data --device cuda \
             --batches "${BATCHES-128,1024}" --sample-modes "${SAMPLE_MODES:-eager,bf16,compile,compile_cl}" ${SPEED_ARGS:-} \
             --out $W/diffusion_speed${TAG:-}.json > $W/diffusion_speed${TAG:-}.log 2>&1 ;;
    mnist|fashion-mnist) $quality $pics --dataset $job ${SETTINGS:+--settings $SETTINGS} --time-budget $B --train bf16=true cuda_graph=true \
           --run-dir runs/ddpm-$job${RUN:-} --grid "${GRID:-ddim:10:0,ddim:20:0,ddim:50:0,dpm-solver++:10:0,dpm-solver++:20:0}" \
           ${BOUND:+--bound-stride $BOUND --bound-limit ${BOUND_LIMIT:-2000}} \
           --out $W/ddpm_$job${RUN:-}.json > $W/ddpm_$job${RUN:-}.log 2>&1 ;;
    mnist-resume|fashion-mnist-resume) d=${job%-resume}; $quality $pics --dataset $d --resume --time-budget $B --run-dir runs/ddpm-$d${RUN:-} \
           ${GRID:+--grid $GRID} --bound-stride ${STRIDE:-10} --out $W/ddpm_$d${RUN:-}.json > $W/ddpm_$d${RUN:-}.log 2>&1 ;;
    # No more training: the rest of the table on the same warm machine, e.g.
    # GRID=ddim:1000:0,ddim:1000:1 (about 4.3 min each with fast sampling).
    mnist-eval|fashion-mnist-eval) d=${job%-eval}; $quality $pics --dataset $d --resume --time-budget 0 --run-dir runs/ddpm-$d${RUN:-} \
           --grid "${GRID:-ddim:100:0,ddim:10:1,ddim:20:1,ddim:50:1,ddim:100:1}" ${GUIDANCE:+--guidance $GUIDANCE} \
           ${BOUND:+--bound-stride $BOUND --bound-limit ${BOUND_LIMIT:-2000}} \
           --out $W/ddpm_${d}${RUN:-}_eval${TAG:-}.json > $W/ddpm_${d}${RUN:-}_eval${TAG:-}.log 2>&1 ;;
    mnist-guided) $quality $pics --dataset mnist --settings conditional=true --time-budget $B --train bf16=true cuda_graph=true \
           --run-dir runs/ddpm-mnist-guided --grid ddim:50:0 --guidance ${GUIDANCE:-0,1,2,4} \
           --out $W/ddpm_mnist_guided.json > $W/ddpm_mnist_guided.log 2>&1 ;;
    bench) python -m deepgen bench mnist --models ddpm --budget ${BENCH_BUDGET:-25} --device cuda --data-dir .data \
           --out $W/bench-mnist > $W/bench_mnist.log 2>&1 ;;
  esac
}
JOBS=" speed mnist fashion-mnist mnist-resume fashion-mnist-resume mnist-eval fashion-mnist-eval mnist-guided bench "
source benchmarks/jobs.sh
check_jobs "$@"
W=$(mktemp -d $OUT/work.XXXX)  # this invocation's outputs, packed at the end
run_jobs "$@"
tail -n 8 $W/*.log 2>/dev/null
tar -czf "$OUT/diffusion-$(echo "$@" | tr ' ' '_')${RUN:-}${TAG:-}.tar.gz" -C $W . && rm -rf $W
