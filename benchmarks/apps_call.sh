#!/usr/bin/env bash
# One device call for issue 14's measurements. The jobs named as arguments run in order;
# "speed" alone (its fit times need the GPU to themselves), the quality jobs at once,
# split into processes by dataset (and code size / normal classes / noise level) so the
# call fits in ten minutes. The quality figures do not depend on time; the processes
# only share the GPU and 16 cores (one thread each). Every JSON row and log is packed into
# $OUT/apps.tar.gz (the device returns at most eight files).
#     bash benchmarks/apps_call.sh                          # speed, then embedding, anomaly, denoising
#     bash benchmarks/apps_call.sh embedding-long anomaly-sweep denoising   # session 9's second round
# Environment: LATENT_DIMS (denoising's code sizes, best on validation; default 64,256,1024),
# SWEEP (anomaly-sweep's code sizes; default 8,16,32,64), LONG_EPOCHS (default 60),
# WIDE_LATENT, WIDE_EPOCHS, WIDE_LR (denoising-wide; defaults 256, 40, 1e-3).
set -u
export PYTHONPATH=src XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
W=$OUT/apps
mkdir -p $W
common="--data-dir .data --device cuda"
[ $# -eq 0 ] && set -- speed embedding anomaly denoising
one() { export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1; }
for job in "$@"; do
  case $job in
    speed) python benchmarks/apps_speed.py $common --out $W/speed.json > $W/speed.log 2>&1 ;;
    embedding) (one; for ds in mnist fashion-mnist; do for d in 2 10 32; do
        python benchmarks/apps_embedding.py $common --datasets $ds --dims $d --out $W/embedding-$ds-$d.json > $W/embedding-$ds-$d.log 2>&1 &
      done; done; wait) & ;;
    # Longer training for the 10-d codes (the target's row), the three best models.
    embedding-long) (one; for ds in mnist fashion-mnist; do
        python benchmarks/apps_embedding.py $common --datasets $ds --dims 10 --epochs ${LONG_EPOCHS:-60} --models ae-conv,vae-conv,dae-conv \
          --out $W/embedding-long-$ds.json > $W/embedding-long-$ds.log 2>&1 &
      done; wait) & ;;
    anomaly) (one; for ds in mnist fashion-mnist; do
        tables=--no-tables; [ $ds = mnist ] && tables=--tables
        python benchmarks/apps_anomaly.py $common --datasets $ds --classes 0,1,2,3,4 --no-tables --out $W/anomaly-$ds-a.json > $W/anomaly-$ds-a.log 2>&1 &
        python benchmarks/apps_anomaly.py $common --datasets $ds --classes 5,6,7,8,9 $tables --out $W/anomaly-$ds-b.json > $W/anomaly-$ds-b.log 2>&1 &
      done; wait) & ;;
    # The reconstruction detectors at several code sizes (a sweep reported whole: one-class
    # training has no anomalies to choose a size on).
    anomaly-sweep) (one; for ds in mnist fashion-mnist; do for part in 0,1,2,3,4 5,6,7,8,9; do
        python benchmarks/apps_anomaly.py $common --datasets $ds --classes $part --no-tables --models ae-conv,dae-conv --latent-dims ${SWEEP:-8,16,32,64} \
          --out $W/anomaly-sweep-$ds-${part:0:1}.json > $W/anomaly-sweep-$ds-${part:0:1}.log 2>&1 &
      done; done; wait) & ;;
    denoising) (one; for ds in mnist fashion-mnist; do for s in 0.3 0.5; do
        python benchmarks/apps_denoising.py $common --datasets $ds --sigmas $s --test 10000 --latent-dims ${LATENT_DIMS:-64,256,1024} \
          --out $W/denoising-$ds-$s.json > $W/denoising-$ds-$s.log 2>&1 &
      done; done; wait) & ;;
    # A wider network trained longer, one code size (session 9: at lr 2e-3 it collapsed in
    # all four settings, every output the mean image; hence lr 1e-3 by default).
    denoising-wide) (one; for ds in mnist fashion-mnist; do for s in 0.3 0.5; do
        python benchmarks/apps_denoising.py $common --datasets $ds --sigmas $s --test 10000 --latent-dims ${WIDE_LATENT:-256} --channels 64,128 \
          --epochs ${WIDE_EPOCHS:-40} --lr ${WIDE_LR:-1e-3} --out $W/denoising-wide-$ds-$s.json > $W/denoising-wide-$ds-$s.log 2>&1 &
      done; done; wait) & ;;
    *) echo "unknown job $job"; exit 2 ;;
  esac
done
wait
tar -czf $OUT/apps.tar.gz -C $OUT apps && rm -rf $W
tar -xzOf $OUT/apps.tar.gz --wildcards '*.log' | grep -v '^{' | grep -i 'error\|traceback' | head -20
