#!/usr/bin/env bash
# One device call: the autoregressive models named as arguments (made, pixelcnn,
# transformer; default all three) trained on binarized MNIST at once on one GPU. Each
# process has the whole GPU's memory; they share its time, so each figure's training time
# is an upper bound on what it needs alone. JSON rows, logs and sample grids go to $OUT.
#     BUDGET=500 bash benchmarks/ar_nll_call.sh pixelcnn transformer
#     BUDGET=520 TOTAL=1040 bash benchmarks/ar_nll_call.sh pixelcnn-long   # then, at once:
#     BUDGET=520 bash benchmarks/ar_nll_call.sh pixelcnn-resume             # (repeat while epochs remain)
#     BUDGET=520 EPOCHS=104 bash benchmarks/ar_nll_call.sh pixelcnn-full    # all 60,000 images, then pixelcnn-resume
#     DROPOUT=0.2 ... pixelcnn-long                                         # the gated layers' dropout
#     EMA=0.9995 ... pixelcnn-full                                          # validate, test and sample the EMA weights
#     LAYERS=12 ... pixelcnn-full                                           # gated layers (default 10)
#     BINARIZATION=static LAYERS=12 DROPOUT=0.2 BUDGET=520 TOTAL=1040 ... pixelcnn-long   # the paper's fixed draw,
#                                                                           # selected on 10,000 held-out images
#     EPOCHS=40 WD=1e-5 ... pixelcnn-long                                       # a fixed schedule (no probe); L2 decay (Adam)
#     CHANNELS=96 TAG=-c96 ... pixelcnn-long                                    # another width; TAG names its run and files,
#                                                                           # so two invocations can share one call (&, wait)
set -u
export PYTHONPATH=src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
B=${BUDGET:-470}
common="--data-dir .data --device cuda --probe-seconds 20"
fast="bf16=true cuda_graph=true schedule=cosine"
for model in "${@:-made pixelcnn transformer}"; do
  case $model in
    made) python benchmarks/ar_mnist_nll.py --model made --settings "hidden=(8000,)" --train $fast \
            --time-budget 170 $common --out $OUT/made.json > $OUT/made.log 2>&1 & ;;
    pixelcnn) python benchmarks/ar_mnist_nll.py --model pixelcnn --settings channels=128 layers=10 --train $fast \
            --time-budget $B $common --samples $OUT/pixelcnn.png --out $OUT/pixelcnn.json > $OUT/pixelcnn.log 2>&1 & ;;
    transformer) python benchmarks/ar_mnist_nll.py --model transformer --settings layers=8 width=256 heads=8 dropout=0.1 \
            --batch-size 128 --train $fast warmup_steps=200 \
            --time-budget $B $common --samples $OUT/transformer.png --out $OUT/transformer.json > $OUT/transformer.log 2>&1 & ;;
    # The PixelCNN alone with compile, on a schedule sized for TOTAL seconds over several
    # calls on one warm machine: pixelcnn-long starts it (runs/ is kept between calls while
    # the machine stays warm), pixelcnn-resume continues it; each call tests the best epoch.
    pixelcnn-long) python benchmarks/ar_mnist_nll.py --model pixelcnn --settings channels=${CHANNELS:-128} layers=${LAYERS:-10} ${DROPOUT:+dropout=$DROPOUT} \
            ${BINARIZATION:+--binarization $BINARIZATION} \
            ${EPOCHS:+--epochs $EPOCHS} --train bf16=true compile=true schedule=cosine ${EMA:+ema=$EMA} ${WD:+weight_decay=$WD} \
            --time-budget $B --total-budget ${TOTAL:-1040} $common \
            --run-dir runs/ar-pixelcnn${TAG:-} --samples $OUT/pixelcnn${TAG:-}.png --out $OUT/pixelcnn${TAG:-}.json > $OUT/pixelcnn${TAG:-}.log 2>&1 & ;;
    # All 60,000 training images, no hold-out, for the EPOCHS that a validated run chose
    # (session 7: the best validation epoch was 104 of a 147-epoch schedule); resume with
    # pixelcnn-resume. The final weights are tested.
    pixelcnn-full) python benchmarks/ar_mnist_nll.py --model pixelcnn --settings channels=${CHANNELS:-128} layers=${LAYERS:-10} ${DROPOUT:+dropout=$DROPOUT} \
            ${BINARIZATION:+--binarization $BINARIZATION} \
            --validation 0 --epochs ${EPOCHS:-104} --train bf16=true compile=true schedule=cosine ${EMA:+ema=$EMA} --time-budget $B \
            --data-dir .data --device cuda --run-dir runs/ar-pixelcnn${TAG:-} --samples $OUT/pixelcnn${TAG:-}.png --out $OUT/pixelcnn${TAG:-}.json > $OUT/pixelcnn${TAG:-}.log 2>&1 & ;;
    pixelcnn-resume) python benchmarks/ar_mnist_nll.py --model pixelcnn --resume --run-dir runs/ar-pixelcnn${TAG:-} --time-budget $B \
            --data-dir .data --device cuda --samples $OUT/pixelcnn${TAG:-}.png --out $OUT/pixelcnn${TAG:-}.json > $OUT/pixelcnn${TAG:-}.log 2>&1 & ;;
    *) echo "unknown model $model"; exit 2 ;;
  esac
done
wait
grep -h '"nll"\|best_epoch\|train_seconds' $OUT/*.json
