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
