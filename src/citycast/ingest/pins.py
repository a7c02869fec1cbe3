"""Speaker PINs: who may go live by telephone, and a guard that makes guessing PINs useless.

- `PinStore` checks a typed PIN against the `SpeakerPin` rows and records failures (audit log, `pin_abuse`
  alerts).
- `PinGuard` (sans-IO, time in seconds passed in) limits tries: 3 per call, and per source address at most 5
  failures in 10 minutes, after which the source is refused for 15 minutes without its PIN being checked at all,
  so a right guess during the block is worth nothing.
- `PinGate` puts the two together for the telephone: one call's PIN entry, one `attempt()` per typed PIN.

Bounding the cost of a check: Argon2 verification takes ~50 ms of CPU by design, so checking a PIN against every
row would make each call's PIN cost grow with the number of speakers, and give a flood of calls a cheap way to
burn the hub's CPU. Each row therefore keeps its PIN's last two digits (`pin_hint`, shown in the console anyway)
and a typed PIN is checked only against the enabled, currently valid rows with the same last two digits, newest
first, at most `MAX_CANDIDATES` of them. The API refuses to create or enable a PIN whose two digits already have
that many enabled rows, so no valid PIN is ever out of reach (and refuses a PIN already in use, so one PIN means one
speaker; if two enabled rows ever matched, the newest wins). Verification runs in a worker thread so the event
loop keeps serving audio.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, or_, select, update

from citycast.hub.audit import audit
from citycast.hub.auth.passwords import verify_dummy, verify_password
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Alert, Priority, SpeakerPin

log = logging.getLogger(__name__)

PIN_MIN_DIGITS = 4
PIN_MAX_DIGITS = 12
PIN_PATTERN = re.compile(rf"^[0-9]{{{PIN_MIN_DIGITS},{PIN_MAX_DIGITS}}}$")
HINT_DIGITS = 2
MAX_CANDIDATES = 32  # hashes checked per typed PIN at most: ~1.6 s of one worker thread in the worst case

TRIES_PER_CALL = 3
FAILURES_PER_SOURCE = 5
FAILURE_WINDOW_S = 600.0
BLOCK_S = 900.0
MAX_SOURCES = 10_000


def pin_problem(pin: str) -> str | None:
    """Why `pin` cannot be a PIN, in words for the operator; None if it can."""
    if not PIN_PATTERN.fullmatch(pin):
        return f"a PIN is {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits (0-9), nothing else"
    return None


def hint_of(pin: str) -> str:
    return pin[-HINT_DIGITS:]


@dataclass(frozen=True)
class SpeakerGrant:
    """What a right PIN allows: who is speaking, on which zones (empty: all), at which priority."""

    pin_id: int
    label: str
    zone_ids: tuple[int, ...]
    priority: Priority
    user_id: int | None


def _valid_at(now: dt.datetime) -> Any:
    return (
        SpeakerPin.enabled.is_(True),
        or_(SpeakerPin.valid_from.is_(None), SpeakerPin.valid_from <= now),
        or_(SpeakerPin.valid_until.is_(None), SpeakerPin.valid_until > now),
    )


class PinStore:
    """The speaker PINs in the hub's database. `publish`, if given, receives `{"type": "alert", ...}` events for
    the console when a `pin_abuse` alert is raised."""

    def __init__(
        self,
        database: Database,
        *,
        max_candidates: int = MAX_CANDIDATES,
        publish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.db = database
        self.max_candidates = max_candidates
        self.publish = publish

    async def verify(self, pin: str, now: dt.datetime) -> SpeakerGrant | None:
        """The grant of the enabled PIN valid at `now` (timezone-aware) that `pin` matches, else None."""
        if now.tzinfo is None:
            raise ValueError("verify() needs a timezone-aware time")
        return await asyncio.to_thread(self._verify, pin, now)

    def _verify(self, pin: str, now: dt.datetime) -> SpeakerGrant | None:
        if pin_problem(pin) is not None:
            verify_dummy(pin or "-")  # malformed input costs as long as a wrong PIN: no timing tells them apart
            return None
        with self.db.session() as s:
            query = (
                select(SpeakerPin)
                .where(SpeakerPin.pin_hint == hint_of(pin), *_valid_at(now))
                .order_by(SpeakerPin.id.desc())
                .limit(self.max_candidates)
            )
            candidates = list(s.scalars(query))
        # The session is closed before the slow part: no connection is held while hashing.
        if not candidates:
            verify_dummy(pin)
            return None
        for row in candidates:
            if verify_password(row.pin_hash, pin):
                with self.db.session() as s:
                    s.execute(update(SpeakerPin).where(SpeakerPin.id == row.id).values(last_used_at=now))
                return SpeakerGrant(
                    pin_id=row.id,
                    label=row.label,
                    zone_ids=tuple(int(z) for z in row.zone_ids or ()),
                    priority=Priority(row.priority),
                    user_id=row.user_id,
                )
        return None

    def problem_with_new(self, pin: str, *, exclude_id: int | None = None) -> str | None:
        """Why `pin` cannot be given to a speaker now, in words for the operator; None if it can. Slow (it checks
        the hashes of the enabled PINs with the same last two digits): call it from a worker thread."""
        problem = pin_problem(pin)
        if problem is not None:
            return problem
        hint = hint_of(pin)
        with self.db.session() as s:
            query = select(SpeakerPin.id, SpeakerPin.pin_hash).where(
                SpeakerPin.enabled.is_(True), SpeakerPin.pin_hint == hint
            )
            if exclude_id is not None:
                query = query.where(SpeakerPin.id != exclude_id)
            rows = [(int(r[0]), str(r[1])) for r in s.execute(query)]
        if len(rows) >= self.max_candidates:
            return f"too many PINs end in {hint} already: choose a PIN with other last two digits"
        if any(verify_password(h, pin) for _, h in rows):
            return "this PIN is already in use: choose another"
        return None

    def hint_full(self, hint: str, *, exclude_id: int | None = None) -> bool:
        """True if enabling one more PIN ending in `hint` would put a usable PIN out of `verify`'s reach."""
        with self.db.session() as s:
            query = select(func.count()).where(SpeakerPin.enabled.is_(True), SpeakerPin.pin_hint == hint)
            if exclude_id is not None:
                query = query.where(SpeakerPin.id != exclude_id)
            return int(s.scalar(query) or 0) >= self.max_candidates

    async def record_failure(self, source: str, *, tries: int, outcome: str, alert: bool) -> None:
        """Audit one wrong PIN; with `alert`, also raise a `pin_abuse` alert (a call that used up its tries, or a
        source now blocked). Never raises: a database problem must not break the call it is about."""
        try:
            event = await asyncio.to_thread(self._record_failure, source, tries, outcome, alert)
        except Exception:
            log.exception("cannot record a wrong PIN from %s", source)
            return
        if event is not None and self.publish is not None:
            self.publish(event)

    def _record_failure(self, source: str, tries: int, outcome: str, alert: bool) -> dict[str, Any] | None:
        log.warning("wrong speaker PIN from %s (try %d, %s)", source, tries, outcome)
        with self.db.session() as s:
            audit(s, None, "pin.failure", f"source:{source}", {"tries": tries, "outcome": outcome}, source[:64])
            if not alert:
                return None
            message = (
                f"{source}: too many wrong speaker PINs, refused for {BLOCK_S / 60:.0f} min"
                if outcome == "blocked"
                else f"{source}: a telephone call used up its {tries} PIN tries"
            )
            row = Alert(site_id=None, kind="pin_abuse", severity="critical", message=message)
            s.add(row)
            s.flush()
            return {
                "type": "alert",
                "alert": {
                    "id": row.id,
                    "site": None,
                    "kind": "pin_abuse",
                    "severity": "critical",
                    "message": message,
                    "raised_at": row.raised_at.isoformat(),
                    "cleared_at": None,
                },
            }


@dataclass
class _Source:
    failures: deque[float]
    blocked_until: float = 0.0


class PinGuard:
    """Failed PINs per source address (sans-IO: `now` in seconds from any monotonic clock).

    A source with `failures` failures within `window_s` is refused for `block_s`. Memory is bounded: past
    `max_sources` the least recently failing sources are forgotten (a forgotten source is one an attacker could
    only have reached by failing from 10,000 other addresses since)."""

    def __init__(
        self,
        *,
        tries_per_call: int = TRIES_PER_CALL,
        failures: int = FAILURES_PER_SOURCE,
        window_s: float = FAILURE_WINDOW_S,
        block_s: float = BLOCK_S,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if min(tries_per_call, failures, max_sources) < 1 or window_s <= 0 or block_s <= 0:
            raise ValueError("PinGuard limits must be positive")
        self.tries_per_call = tries_per_call
        self.failures = failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def _current(self, source: str, now: float) -> _Source | None:
        entry = self._sources.get(source)
        if entry is None:
            return None
        while entry.failures and now - entry.failures[0] >= self.window_s:
            entry.failures.popleft()
        if not entry.failures and now >= entry.blocked_until:
            del self._sources[source]  # nothing left to remember
            return None
        return entry

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds `source` is still refused for; 0 if it may try."""
        entry = self._current(source, now)
        return 0.0 if entry is None else max(0.0, entry.blocked_until - now)

    def allowed(self, source: str, now: float) -> bool:
        return self.blocked_for(source, now) == 0.0

    def on_failure(self, source: str, now: float) -> bool:
        """Count a wrong PIN from `source`; True if this failure has just blocked it."""
        entry = self._current(source, now)
        if entry is None:
            entry = self._sources[source] = _Source(deque(maxlen=self.failures))
        entry.failures.append(now)
        self._sources.move_to_end(source)
        blocked = len(entry.failures) >= self.failures and now >= entry.blocked_until
        if blocked:
            entry.blocked_until = now + self.block_s
            entry.failures.clear()  # after the block, a fresh count
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return blocked


Outcome = Literal["granted", "retry", "hangup", "blocked"]


@dataclass(frozen=True)
class PinResult:
    """`granted`: go live with `grant`. `retry`: say "wrong PIN" and listen again. `hangup`: the call used its
    tries. `blocked`: the source is refused (its PIN was not checked)."""

    outcome: Outcome
    grant: SpeakerGrant | None = None
    tries_left: int = 0


class PinGate:
    """One telephone call's PIN entry, over a shared store and guard."""

    def __init__(self, store: PinStore, guard: PinGuard, source: str) -> None:
        self.store = store
        self.guard = guard
        self.source = source
        self.tries = 0

    @property
    def tries_left(self) -> int:
        return max(0, self.guard.tries_per_call - self.tries)

    async def attempt(self, pin: str, *, now_s: float, now: dt.datetime) -> PinResult:
        """Check one typed PIN. `now_s` is the guard's clock (seconds), `now` the wall-clock time for validity."""
        if not self.guard.allowed(self.source, now_s):
            return PinResult("blocked")
        if self.tries_left == 0:
            return PinResult("hangup")
        self.tries += 1
        grant = await self.store.verify(pin, now)
        if grant is not None:
            return PinResult("granted", grant, self.tries_left)
        blocked = self.guard.on_failure(self.source, now_s)
        outcome: Outcome = "blocked" if blocked else ("hangup" if self.tries_left == 0 else "retry")
        await self.store.record_failure(self.source, tries=self.tries, outcome=outcome, alert=outcome != "retry")
        return PinResult(outcome, None, self.tries_left)
