#!/usr/bin/env bash
# One device call for issue 15 (the VAE table), JSON rows and logs packed into
# $OUT/vae.tar.gz (the device returns at most eight files).
#   Phase A, the GPU alone: the one-layer VAE within 120 s of training (issue 15's first
#   row), with CUDA graphs (eager if the capture fails).
#   Phase B, at once on the shared GPU (each training time is an upper bound on what it
#   needs alone): IWAE k=50, two stochastic layers with IWAE k=50, the IAF posterior, a
#   mixture-density head, and the ablations of the batch-1000 VAE (one change at a time,
#   equal epochs): base, the paper's 3^i lr schedule, KL warm-up, static binarization.
#     BUDGET_A=120 BUDGET_B=360 bash benchmarks/vae_call.sh
#     PHASES=B bash benchmarks/vae_call.sh        # phase B only
#     PHASES=C BUDGET_C=400 bash benchmarks/vae_call.sh   # phase C: the IWAE rows, longer
#   Phases L and R: the two IWAE rows on one schedule over several calls on one warm
#   machine (run folders in runs/), TOTAL_L seconds of training in all, BUDGET_L per call.
#     PHASES=L BUDGET_L=540 TOTAL_L=2160 bash benchmarks/vae_call.sh   # starts them
#     PHASES=R BUDGET_L=540 bash benchmarks/vae_call.sh                # at once, each next call
#   Phase I: the IAF row with convolutional networks (Kingma et al. 2016's 79.10 is a
#   convolutional ResNet VAE; the MLP IAF of phase B reached 93.66), BUDGET_I seconds.
#     PHASES=I BUDGET_I=500 bash benchmarks/vae_call.sh
#   SAVE_RUNS=1: runs/ back in $OUT for a later session's phase R (benchmarks/README.md).
#   TRAIN_A: phase A's trainer settings (default cuda_graph=true; e.g. "cuda_graph=true compile=true").
set -u
export PYTHONPATH=src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
W=$OUT/vae
mkdir -p $W
source benchmarks/jobs.sh
restore_runs  # runs/ of an earlier session's SAVE_RUNS=1 call, carried as .runs
A=${BUDGET_A:-120}
B=${BUDGET_B:-360}
E=${ABLATION_EPOCHS:-300}
run() {  # run NAME ARGS...: vae_mnist_nll.py with ARGS, its JSON and log under $W
  local name=$1; shift
  python benchmarks/vae_mnist_nll.py --data-dir .data --device cuda --out $W/$name.json "$@" > $W/$name.log 2>&1
}
small="--batch-size 100 --lr 1e-3"
two="hidden=200,200 latent_dim=100 stochastic_layers=2 latent_dim2=50 hidden2=100,100"  # Burda et al.'s two stochastic layers
if [[ ${PHASES:-AB} == *A* ]]; then
  run vae-120s $small --time-budget $A --train ${TRAIN_A:-cuda_graph=true} --label "VAE, batch 100, ${TRAIN_A:-cuda_graph=true}" \
    || run vae-120s-eager $small --time-budget $A --label "VAE, batch 100, eager"
fi
if [[ ${PHASES:-AB} == *B* ]]; then
  g="cuda_graph=true"
  run iwae50 $small --time-budget $B --train $g --settings objective=iwae train_k=50 --paper 84.78 &
  run iwae50-2layer $small --time-budget $B --train $g --paper 82.90 \
    --settings $two objective=iwae train_k=50 &
  run iaf $small --time-budget $B --train $g --settings posterior=iaf --paper 79.10 &
  run mixture-bernoulli $small --time-budget $B --train $g --settings likelihood=mixture-bernoulli components=5 &
  cap="max_seconds=$((B + 60))"
  run ablate-base --epochs $E --train $g $cap --label "ablation: base (batch 1000, lr 3e-3, cosine)" &
  run ablate-schedule-iwae --epochs $E --schedule iwae --train $g $cap --label "ablation: the paper's 3^i lr schedule" &
  run ablate-kl-warmup --epochs $E --train $g $cap --settings kl_warmup=6000 --label "ablation: KL warm-up over 6,000 steps" &
  run ablate-static --epochs $E --binarization static --train $g $cap --label "ablation: static binarization" &
  wait
fi
if [[ ${PHASES:-AB} == *C* ]]; then  # the two IWAE rows trained longer, side by side
  C=${BUDGET_C:-400}
  run iwae50-long $small --time-budget $C --train cuda_graph=true --settings objective=iwae train_k=50 --paper 84.78 &
  run iwae50-2layer-long $small --time-budget $C --train cuda_graph=true --paper 82.90 \
    --settings $two objective=iwae train_k=50 &
  wait
fi
if [[ ${PHASES:-AB} == *I* ]]; then
  conv="network=conv channels=${IAF_CHANNELS:-64,128} latent_dim=32 posterior=iaf iaf_steps=${IAF_STEPS:-4}"
  run iaf-conv $small --time-budget ${BUDGET_I:-500} --train cuda_graph=true --settings $conv --paper 79.10 \
    || run iaf-conv-eager $small --time-budget ${BUDGET_I:-500} --settings $conv --paper 79.10
fi
L=${BUDGET_L:-540}
if [[ ${PHASES:-AB} == *L* ]]; then
  run iwae50-run $small --time-budget $L --total-budget ${TOTAL_L:-2160} --run-dir runs/vae-iwae50 --train cuda_graph=true \
    --settings objective=iwae train_k=50 --paper 84.78 &
  run iwae50-2layer-run $small --time-budget $L --total-budget ${TOTAL_L:-2160} --run-dir runs/vae-iwae50-2layer --train cuda_graph=true \
    --settings $two objective=iwae train_k=50 --paper 82.90 &
  wait
fi
if [[ ${PHASES:-AB} == *R* ]]; then
  run iwae50-run --resume --run-dir runs/vae-iwae50 --time-budget $L --paper 84.78 &
  run iwae50-2layer-run --resume --run-dir runs/vae-iwae50-2layer --time-budget $L --paper 82.90 &
  wait
fi
tar -czf $OUT/vae.tar.gz -C $OUT vae && rm -rf $W
tar -xzOf $OUT/vae.tar.gz --wildcards '*.log' | grep -i '^trained\|error\|traceback' | head -30
if [ -n "${SAVE_RUNS:-}" ]; then save_runs $OUT/vae.tar.gz; fi  # runs/ (and the rows) for a later session
