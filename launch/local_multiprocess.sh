#!/usr/bin/env bash
# Run one jaxpose job as N processes on this machine, each with D simulated CPU devices,
# joined through jax.distributed exactly as the hosts of a pod are. For trying multi-host
# runs (and their failure modes) without a cluster.
#
#   launch/local_multiprocess.sh 2 2 --config configs/default.py:smoke --workdir /tmp/mp
#   DRY_RUN=1 launch/local_multiprocess.sh 2 2 --config configs/default.py:smoke
#
# Environment: PYTHON (default python3), PORT (coordinator port, default 12355).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS [jaxpose.launch flags...]" >&2
  exit 2
fi
num_processes="$1"
devices="$2"
shift 2
python="${PYTHON:-python3}"
port="${PORT:-12355}"

pids=()
for ((index = 0; index < num_processes; index++)); do
  command=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu
           "$python" -m jaxpose.launch "--coordinator_address=localhost:${port}"
           "--num_processes=${num_processes}" "--process_id=${index}" "$@")
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${command[@]}"
    printf '&\n'
    continue
  fi
  "${command[@]}" &
  pids+=("$!")
done
[[ -n "${DRY_RUN:-}" ]] && exit 0

# Like a scheduler: a SIGTERM or Ctrl-C to this script goes to every process.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  # A trapped signal interrupts `wait`; wait again until the process has really ended.
  until wait "$pid"; do
    code=$?
    if ! kill -0 "$pid" 2>/dev/null; then
      status=$code
      break
    fi
  done
done
exit "$status"
