#!/usr/bin/env bash
# Set up, then run the demo: a speech clip to 8 site agents over a private NATS, with latency and sync per site.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/citycast demo "$@"
