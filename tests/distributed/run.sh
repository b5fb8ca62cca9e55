#!/bin/sh
# Run the RayVecEnv tests inside a private network namespace (loopback only), the one place Ray may run here.
#   bash tests/distributed/run.sh [pytest arguments...]      (as root; PY defaults to .venv/bin/python)
# Exits with pytest's code; pytest's 5 (no test collected) counts as a failure.
set -u
cd "$(dirname "$0")/../.." || exit 1
PY="${PY:-.venv/bin/python}"
export PY
unshare -n sh -c 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 exec "$PY" -m pytest -q -p no:cacheprovider tests/distributed "$@"' run.sh "$@"
code=$?
if [ "$code" -eq 5 ]; then
    echo "tests/distributed/run.sh: pytest collected no test (exit 5): counted as a failure" >&2
    exit 1
fi
exit "$code"
