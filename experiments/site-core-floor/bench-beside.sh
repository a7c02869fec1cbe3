# Sourced by compare.sh and control-side.sh (not run alone): the set-up both share. Given OUT_DIR as $1, it sets
# HERE, REPO, OUT, PY and TREE (a worktree of HEAD with control-only.patch applied), works in OUT (the hub keeps
# its citycast-data/ in the working folder), and defines start_bench WARMUP_S: one `citycast bench` of a lone site
# beside a snapclient in the background, returning once its site is up, with BENCH (its pid), B (its folder) and
# PORT (its bus) set.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PY="$REPO/.venv/bin/python"
cd "$OUT"
TREE="$OUT/control-only-tree"
[ -d "$TREE" ] || { git -C "$REPO" worktree add -f -q "$TREE" HEAD && git -C "$TREE" apply "$HERE/control-only.patch"; }

start_bench() {
  B="$OUT/bench"
  "$REPO/.venv/bin/citycast" bench --sites 1 --processes 1 --snapclients 1 --seconds 60 --warmup "$1" --delay 170 \
      --dac-block 2400 --packets-per-message 2 --out "$B" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1 &
  BENCH=$!
  while [ ! -f "$B/sites-0.ready" ]; do sleep 0.5; kill -0 $BENCH 2>/dev/null || { tail "$OUT/bench.log"; exit 1; }; done
  PORT=$(grep -o '127.0.0.1:[0-9]*' "$B/nats/nats.conf" | head -1 | cut -d: -f2)
}
