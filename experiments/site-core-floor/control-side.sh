#!/bin/bash
# What the Python beside a compiled core would cost once it wakes less: one `citycast bench` run of a lone site
# beside a snapclient, and four sites with their audio path cut off (control-only.patch) on the same bus, measured
# over 50 s from 100 s after they start:
#   today's control side (state poll every 100 ms, pollers on the 250 ms grid, 4 clock exchanges a second while the
#   estimate refines); the state poll at 1 s (what a report woken by the core's events leaves when nothing
#   changes); the pollers' grid at 1 s too; and the clock at 1 exchange a second as well (a site's steady state:
#   the estimator refines at 4 a second for up to 10 minutes, until it knows the offset to 20 µs).
# Measurement only: the knobs are environment variables of the patched worktree, not of citycast.
#   usage: experiments/site-core-floor/control-side.sh OUT_DIR
. "$(dirname "$0")/bench-beside.sh"
start_bench 100
start() {  # NAME FIRST_SITE STATE_POLL_S GRID_S REFINE_S
  PYTHONPATH="$TREE/src" CITYCAST_DIAG_CONTROL_ONLY=1 CITYCAST_DIAG_STATE_POLL_S=$3 CITYCAST_DIAG_GRID_S=$4 \
    CITYCAST_DIAG_REFINE_S=$5 "$PY" -m citycast simulate --sites 1 --first "$2" --nats "nats://127.0.0.1:$PORT" \
    --trust "$B/trusted.keys" --delay-ms 170 --seconds 180 --out "$OUT/$1" --block 2400 > "$OUT/$1.log" 2>&1 &
  echo $!
}
PIDS=("$(start today 7 0.1 0.25 0.25)" "$(start poll1s 8 1.0 0.25 0.25)" "$(start grid1s 9 1.0 1.0 0.25)" \
      "$(start exchange1s 10 1.0 1.0 1.0)")
snap() { for p in "${PIDS[@]}"; do
  echo "$(awk '{print $14 + $15}' /proc/"$p"/stat) $(awk '/^voluntary_ctxt_switches/{print $2}' /proc/"$p"/status)"
done | paste -sd' '; }
sleep 100; A=$(snap); sleep 50; Z=$(snap)
wait $BENCH; kill "${PIDS[@]}" 2>/dev/null || true
"$PY" - "$OUT" "$A" "$Z" <<'PYEOF'
import json, os, sys
from pathlib import Path
out, a, z = Path(sys.argv[1]), [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
b = json.loads((out / "bench.json").read_text()); snap = b["snapclient_cpu_percent"]; tick = os.sysconf("SC_CLK_TCK")
print(f"python site {b['site_cpu_percent_per_site']:.2f} % | snapclient {snap:.3f} % | ratio {b['cpu_vs_snapclient']:.2f}")
names = ("today", "state poll 1 s", "+ grid 1 s", "+ 1 clock exchange a second")
res = {}
for i, name in enumerate(names):
    cpu = (z[2 * i] - a[2 * i]) / tick / 50 * 100; wake = (z[2 * i + 1] - a[2 * i + 1]) / 50
    res[name] = {"cpu_percent": cpu, "vs_snapclient": cpu / snap, "main_wakeups_per_s": wake}
    print(f"control only, {name}: {cpu:.3f} % ({cpu / snap:.2f} x the snapclient), {wake:.1f} wake-ups/s")
(out / "control-side.json").write_text(json.dumps({"snapclient_cpu_percent": snap, "control": res}, indent=1))
PYEOF
