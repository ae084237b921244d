# Shared by the *_call.sh scripts (sourced): each defines run_job NAME and the accepted
# names JOBS=" a b c ", then calls check_jobs "$@" (every name checked before any job
# starts, so a typo costs no device time) and run_jobs "$@" (one after the other, or all
# at once with PARALLEL=1: the GPU shared, each training time an upper bound).
check_jobs() {
  local job
  for job in "$@"; do
    [[ $JOBS == *" $job "* ]] || { echo "unknown job $job (accepted:$JOBS)"; exit 2; }
  done
}
run_jobs() {
  local job
  for job in "$@"; do
    if [ -n "${PARALLEL:-}" ]; then run_job $job & else run_job $job; fi
  done
  wait
}
# Runs longer than a session's device time: the machine, and runs/ on it, is lost between
# sessions. save_runs FILE... packs runs/ (each run's newest checkpoint only, to fit what a
# call returns: files of at most 16 MiB, 64 MiB in all) and the FILEs named (logs, sample
# grids: a call returns at most eight files; they are moved in) into
# $OUT/runs.tgz.part-00, -01, ... of 15 MiB each. Copied here into .runs/ (git-ignored) and
# carried by the next call (`carry` names .runs), restore_runs unpacks runs/ before its
# jobs start. benchmarks/README.md has the steps.
restore_runs() {
  compgen -G ".runs/runs.tgz.part-*" > /dev/null || return 0
  cat .runs/runs.tgz.part-* | tar -xz runs || exit
  echo "restored from .runs/: $(ls runs | tr '\n' ' ')"
}
save_runs() {
  [ -d runs ] || return 0
  local run step newest excl=() extras=() f
  for run in runs/*/; do
    newest=$(ls -d "${run}"checkpoints/step-* 2>/dev/null | sort | tail -n 1)
    for step in "${run}"checkpoints/step-*; do
      [ -e "$step" ] && [ "$step" != "$newest" ] && excl+=("--exclude=$step")
    done
  done
  for f in "$@"; do [ -f "$f" ] && extras+=("$(basename "$f")"); done
  tar -cz "${excl[@]}" runs ${extras[@]:+-C "$OUT" "${extras[@]}"} | split -b 15M -d -a 2 - "$OUT/runs.tgz.part-" || return
  for f in "${extras[@]}"; do rm -f "$OUT/$f"; done
  ls -l "$OUT"/runs.tgz.part-*
}
