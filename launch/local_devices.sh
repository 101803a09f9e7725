#!/usr/bin/env bash
# Run jaxpose.launch on N simulated CPU devices (default 4), to try data parallelism locally.
#   launch/local_devices.sh 4 --config configs/default.py:smoke --workdir /tmp/dp4
set -euo pipefail
devices="${1:-4}"
shift || true
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}"
exec python -m jaxpose.launch "$@"
