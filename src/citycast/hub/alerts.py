"""Alert rules over the fleet's site views (sans-IO: time is passed in).

Each rule raises at most one open alert per (site, kind) and clears it when the condition is over, so a site
that keeps misbehaving is one alert, not one a second:

- `offline` (warning): no telemetry for more than 10 s; cleared when the site reports again. An enrolled site
  never heard from is counted from the first time the rules saw it, so a hub restart raises nothing for the
  seconds its sites take to report.
- `underruns` (warning): the site's underrun counter went up since its last report; cleared after 60 s without
  a new one.
- `sync_error` (warning): estimated sync error above 5 ms; cleared below 4 ms (hysteresis: no flapping at 5).
- `sink_failed` (critical): the site runs but its audio output failed (it retries by itself); the loudspeaker
  is silent. Cleared when the site reports its output working again.
- `clock_step_refused` (critical): the site refuses to step its broadcast clock as its time responder says
  (beyond 1 s, see `citycast.clock.estimator.StepGuard`): the responder or the path to it lies (a replay of old
  audio needs exactly that), or the hub's clock was set. Cleared when the site's estimate agrees again.
- `creds_expiring` (warning): the site's NATS credentials expire within 7 days: it renews them at half their
  life (15 days of 30), so it has been failing to for a week (its creds file not writable, the hub refusing).
  Cleared when it reports a later expiry.
- `path_down` (warning): a site on two or more paths (city servers, uplinks) has had one of them down for more than
  5 s: it still plays, on the others, but it has lost its spare. A path back up within 5 s (a reconnect, a city
  server restarting) raises nothing. 5 s, so that with the report period (1 s) and the time a silently cut path
  takes to be judged down (up to 2 s) the console hears of it within 10 s of the fault (at 7 s the drills saw
  it at 9.2-10.1 s after a silent cut). Cleared when every path is up again.
- `rejected_frames` (critical): frames refused as malformed, untrusted, badly signed, replayed or oversized went
  up: someone is putting foreign or tampered audio on the bus. Cleared after 60 s without a new one.

Counters seen for the first time are a baseline, not news: after a restart of the hub the history of each site's
counters raises nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OFFLINE_ALERT_NS = 10_000_000_000
QUIET_CLEAR_NS = 60_000_000_000
SYNC_ALERT_MS = 5.0
SYNC_CLEAR_MS = 4.0
CREDS_WARN_NS = 7 * 24 * 3600 * 1_000_000_000
PATH_DOWN_ALERT_NS = 5_000_000_000

KINDS = (
    "offline",
    "underruns",
    "sync_error",
    "sink_failed",
    "clock_step_refused",
    "creds_expiring",
    "path_down",
    "rejected_frames",
)


@dataclass(frozen=True)
class AlertEvent:
    site: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    message: str
    action: Literal["raise", "clear"]
    at_ns: int

    @property
    def raised(self) -> bool:
        return self.action == "raise"

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "action": self.action,
            "at_s": round(self.at_ns / 1e9, 3),
        }


@dataclass
class _SiteRules:
    open: dict[str, AlertEvent] = field(default_factory=dict)  # kind -> the event that raised it
    underruns: int | None = None
    forged: int | None = None
    last_underrun_ns: int = 0
    last_forged_ns: int = 0
    first_seen_ns: int | None = None
    path_down_since: dict[str, int] = field(default_factory=dict)  # path label -> when it was first seen down


class AlertRules:
    def __init__(
        self,
        *,
        offline_after_ns: int = OFFLINE_ALERT_NS,
        quiet_clear_ns: int = QUIET_CLEAR_NS,
        creds_warn_ns: int = CREDS_WARN_NS,
    ) -> None:
        self.offline_after_ns = offline_after_ns
        self.quiet_clear_ns = quiet_clear_ns
        self.creds_warn_ns = creds_warn_ns
        self._sites: dict[str, _SiteRules] = {}

    def evaluate(self, view: dict[str, Any], now_ns: int) -> list[AlertEvent]:
        """Apply every rule to one site's current view (`FleetState.view`); returns alerts raised and cleared."""
        name = str(view["name"])
        st = self._sites.get(name)
        if st is None:
            st = self._sites[name] = _SiteRules(first_seen_ns=now_ns)
        out: list[AlertEvent] = []
        state = view.get("state")

        # offline
        if state == "offline":
            seen = view.get("last_seen_s")
            since = int(seen * 1e9) if isinstance(seen, int | float) else (st.first_seen_ns or now_ns)
            if now_ns - since >= self.offline_after_ns:
                self._raise(
                    st, out, name, "offline", "warning", f"no telemetry for {(now_ns - since) / 1e9:.0f} s", now_ns
                )
        else:
            self._clear(st, out, name, "offline", "reporting again", now_ns)

        # Counters of a site not heard since this hub started are unknown, not 0: a view made for an enrolled site
        # before its first report says 0, and taking that as the baseline would make its first report's counters
        # (its whole life's) look new.
        heard = view.get("last_seen_s") is not None

        # underruns
        underruns = view.get("underruns") if heard else None
        if isinstance(underruns, int):
            if st.underruns is not None and underruns > st.underruns:
                st.last_underrun_ns = now_ns
                self._raise(st, out, name, "underruns", "warning", f"{underruns - st.underruns} new underruns", now_ns)
            st.underruns = underruns
        if "underruns" in st.open and now_ns - st.last_underrun_ns >= self.quiet_clear_ns:
            self._clear(st, out, name, "underruns", "no underruns for 60 s", now_ns)

        # sync error (only what a placed-in-time site reports; an offline site keeps its last word)
        err = view.get("sync_error_ms")
        if state != "offline" and isinstance(err, int | float):
            if err > SYNC_ALERT_MS:
                self._raise(
                    st, out, name, "sync_error", "warning", f"sync error {err:.1f} ms (> {SYNC_ALERT_MS:g} ms)", now_ns
                )
            elif err < SYNC_CLEAR_MS:
                self._clear(st, out, name, "sync_error", f"sync error back to {err:.1f} ms", now_ns)

        # a silent loudspeaker at a running site (an offline site keeps its last word)
        sink_error = view.get("sink_error")
        if state != "offline":
            if sink_error:
                self._raise(st, out, name, "sink_failed", "critical", f"audio output failed: {sink_error}", now_ns)
            else:
                self._clear(st, out, name, "sink_failed", "audio output working again", now_ns)

        # a clock step refused (an offline site keeps its last word)
        step = view.get("clock_step_refused_ms")
        if state != "offline":
            if isinstance(step, int | float) and step:
                self._raise(
                    st,
                    out,
                    name,
                    "clock_step_refused",
                    "critical",
                    f"refuses a clock step of {step / 1000:+.3f} s: its time responder may be lying",
                    now_ns,
                )
            else:
                self._clear(st, out, name, "clock_step_refused", "clock agrees again", now_ns)

        # credentials the site is failing to renew (an offline site keeps its last word)
        expire = view.get("creds_expire_s")
        if isinstance(expire, int) and state != "offline":
            left_ns = expire * 1_000_000_000 - now_ns
            if left_ns < self.creds_warn_ns:
                when = f"in {left_ns / 3.6e12:.0f} h" if left_ns > 0 else "already"
                self._raise(st, out, name, "creds_expiring", "warning",
                            f"its bus credentials expire {when}: it is not renewing them", now_ns)  # fmt: skip
            else:
                self._clear(st, out, name, "creds_expiring", "credentials renewed", now_ns)

        # a spare path lost (an offline site keeps its last word)
        paths = view.get("paths")
        if isinstance(paths, dict) and state != "offline":
            down = sorted(str(label) for label, up in paths.items() if not up)
            st.path_down_since = {p: st.path_down_since.get(p, now_ns) for p in down}
            long_down = [p for p in down if now_ns - st.path_down_since[p] >= PATH_DOWN_ALERT_NS]
            if long_down and len(down) < len(paths):
                secs = (now_ns - min(st.path_down_since[p] for p in long_down)) / 1e9
                self._raise(st, out, name, "path_down", "warning",
                            f"path {', '.join(long_down)} down for {secs:.0f} s: playing on {len(paths) - len(down)} "
                            f"of {len(paths)}", now_ns)  # fmt: skip
            elif not down:
                self._clear(st, out, name, "path_down", "every path up again", now_ns)

        # forged or foreign frames
        forged = view.get("forged") if heard else None
        if isinstance(forged, int):
            if st.forged is not None and forged > st.forged:
                st.last_forged_ns = now_ns
                self._raise(
                    st,
                    out,
                    name,
                    "rejected_frames",
                    "critical",
                    f"{forged - st.forged} frames refused as forged or foreign: someone may be sending unsigned audio",
                    now_ns,
                )
            st.forged = forged
        if "rejected_frames" in st.open and now_ns - st.last_forged_ns >= self.quiet_clear_ns:
            self._clear(st, out, name, "rejected_frames", "no refused frames for 60 s", now_ns)
        return out

    @staticmethod
    def _raise(
        st: _SiteRules,
        out: list[AlertEvent],
        site: str,
        kind: str,
        severity: Literal["info", "warning", "critical"],
        message: str,
        now_ns: int,
    ) -> None:
        if kind in st.open:
            return
        event = AlertEvent(site, kind, severity, message, "raise", now_ns)
        st.open[kind] = event
        out.append(event)

    @staticmethod
    def _clear(st: _SiteRules, out: list[AlertEvent], site: str, kind: str, message: str, now_ns: int) -> None:
        raised = st.open.pop(kind, None)
        if raised is not None:
            out.append(AlertEvent(site, kind, raised.severity, message, "clear", now_ns))

    def open_alerts(self) -> list[AlertEvent]:
        """The raising event of every alert still open."""
        return [e for st in self._sites.values() for e in st.open.values()]

    def has_open(self, site: str) -> bool:
        st = self._sites.get(site)
        return bool(st and st.open)

    def forget(self, site: str, now_ns: int) -> list[AlertEvent]:
        """A deleted site: its open alerts are cleared."""
        st = self._sites.pop(site, None)
        if st is None:
            return []
        return [AlertEvent(site, e.kind, e.severity, "site removed", "clear", now_ns) for e in st.open.values()]
