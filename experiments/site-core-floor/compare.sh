#!/bin/bash
# One `citycast bench` run of a lone site beside a snapclient, with two more processes measured over the same
# address: site_core_floor (a compiled receive -> verify -> decode -> sink loop, this folder) and a site with its
# audio path cut off (control-only.patch, applied to a worktree), so that what a compiled core would cost can be
# set against the snapclient of the same run. Measurement only: none of this is part of citycast.
#   usage: experiments/site-core-floor/compare.sh OUT_DIR
# Needs: the README's set-up, snapserver/snapclient (the bench's set-up installs them), a C compiler and
#   apt-get install libnats-dev libsodium-dev libopus-dev
. "$(dirname "$0")/bench-beside.sh"
gcc -O2 -Wall -Wextra -o "$OUT/site_core_floor" "$HERE/site_core_floor.c" \
    $(pkg-config --cflags --libs libnats libsodium opus) -lpthread -lm
start_bench 15
KEY=$(head -1 "$B/trusted.keys")
PYTHONPATH="$TREE/src" CITYCAST_DIAG_CONTROL_ONLY=1 "$PY" -m citycast simulate --sites 1 --first 7 \
    --nats "nats://127.0.0.1:$PORT" --trust "$B/trusted.keys" --delay-ms 170 --seconds 150 --out "$OUT/control" \
    --block 2400 > "$OUT/control.log" 2>&1 &
CONTROL=$!
# the core's own window: 50 s from 5 s after its first frame, inside the bench's 60 s address
"$OUT/site_core_floor" "nats://127.0.0.1:$PORT" citycast.audio.1 "$KEY" 2400 5 50 libnats > "$OUT/core.json" &
CORE=$!
"$OUT/site_core_floor" "nats://127.0.0.1:$PORT" citycast.audio.1 "$KEY" 2400 5 50 one-thread > "$OUT/core1.json" &
CORE1=$!
sleep 10
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$CONTROL/stat)
v0=$(awk '/^voluntary_ctxt_switches/{print $2}' /proc/$CONTROL/status)
sleep 60
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$CONTROL/stat)
v1=$(awk '/^voluntary_ctxt_switches/{print $2}' /proc/$CONTROL/status)
"$PY" -c "import json,sys; t=$(getconf CLK_TCK); print(json.dumps({'control_cpu_percent': ($u1+$s1-$u0-$s0)/t/60*100, 'control_main_wakeups_per_s': ($v1-$v0)/60}))" > "$OUT/control.json"
wait $CORE; wait $CORE1; wait $BENCH; kill $CONTROL 2>/dev/null || true
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
b, c, k, k1 = (json.loads((out / n).read_text()) for n in ("bench.json", "control.json", "core.json", "core1.json"))
snap = b["snapclient_cpu_percent"]
print(f"python site {b['site_cpu_percent_per_site']:.2f} % | snapclient {snap:.3f} % | ratio {b['cpu_vs_snapclient']:.2f}")
for name, x in (("libnats", k), ("one thread", k1)):
    print(f"compiled floor, {name}: {x['cpu_percent']:.3f} % ({x['cpu_percent'] / snap:.2f} x), {x['frames']} frames, "
          f"{x['underruns']} underruns, {x['bad']} refused, {x['wakeups_per_s']:.0f} wake-ups/s, "
          f"{x['us_per_frame']:.0f} us/frame, peak RSS {x['peak_rss_mb']:.1f} MB; with the control beside it "
          f"{(x['cpu_percent'] + c['control_cpu_percent']) / snap:.2f} x the snapclient")
print(f"control only (python) {c['control_cpu_percent']:.3f} %, {c['control_main_wakeups_per_s']:.1f} wake-ups/s")
PYEOF
