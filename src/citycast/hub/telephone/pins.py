"""Speaker PINs: who may go live by telephone or browser, and a guard that makes guessing PINs useless.

- `PinStore` finds the rows a typed PIN could match and checks the hashes (in the bounded hash pool), and records
  failures (audit log, `pin_abuse` alerts).
- `PinGuard` (sans-IO, time in seconds passed in) limits tries, and counts every attempt *before* its PIN is
  checked, so attempts sent in parallel cannot all slip past a limit checked only before the slow hash:
  - per source (an IP address, or a caller's identity behind a trusted SIP trunk): one attempt in flight at a
    time (a second concurrent one is refused at once, not queued), at most 5 failures in 10 minutes, then the
    source is refused for 15 minutes without its PIN being checked at all;
  - per PIN row, whatever the sources: every wrong guess counts against the rows it was checked against; a row
    with 10 failures within 10 minutes is locked for an hour and a `pin_abuse` alert is raised. While a row is
    locked (or its budget is used up by attempts still in flight) a right guess of it is not a grant, and the
    caller is told exactly what a wrong guess is told, so the lock is no oracle.
  - 3 tries per call (`PinGate`).
- `PinGate` puts them together: one call's (or one browser offer's) PIN entry, one `attempt()` per typed PIN.

Why these numbers. A speaker who mistypes makes one to three failures; per source, 5 in 10 minutes leaves room for
two bad calls and stops a script after 5 hashes. Per PIN, 10 in 10 minutes cannot be reached by one source (its
limit is 5), so one caller's typos never lock someone else's PIN; but a guesser spread over many addresses or
spoofed caller IDs (behind a trunk the caller ID is whatever the PSTN says) gets at most ~10 useful guesses per
row per lock period: against the 10,000 PINs that share a 6-digit PIN's last two digits that is weeks of
continuous guessing, every hour of it raising a new critical alert. The lock is an hour so that a persistent
guesser keeps a PIN locked only by guessing all the time (guesses during the lock count, and a row still over
its budget when the lock ends is locked again, with a new alert), and an operator sees each lock on the console and
can unlock the PIN or rotate it to a new number (`/api/pins/{id}/unlock`, `/rotate`).

Bounding the cost of a check: Argon2 verification takes ~50 ms of CPU by design, so checking a PIN against every
row would make each call's PIN cost grow with the number of speakers, and give a flood of calls a cheap way to
burn the hub's CPU. Each row therefore keeps its PIN's last two digits (`pin_hint`, shown in the console anyway)
and a typed PIN is checked only against the enabled, currently valid rows with the same last two digits, newest
first, at most `MAX_CANDIDATES` of them. The API refuses to create or enable a PIN whose two digits already have
that many enabled rows, so no valid PIN is ever out of reach (and refuses a PIN already in use, so one PIN means one
speaker; if two enabled rows ever matched, the newest wins). Verification runs in the process's bounded hash pool
(`citycast.hub.auth.hashing`), never on an event loop; when the pool is full the attempt is refused as "try
later" and not counted (no PIN was checked, so it told the caller nothing).

New PINs have at least 6 digits. Rows made before that rule with 4 or 5 digits keep working (withdrawing a
speaker's PIN unannounced is worse, possibly mid-emergency), but the hub cannot see a PIN's length in its hash:
it learns it when the PIN is used, then audits `pin.weak` and the API lists the row as `weak` until it is rotated.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, or_, select, update

from citycast.hub.audit import audit
from citycast.hub.auth.hashing import HashPool, HashPoolBusy, default_pool
from citycast.hub.auth.passwords import verify_dummy, verify_password
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Alert, AuditEntry, Priority, SpeakerPin

log = logging.getLogger(__name__)

PIN_MIN_DIGITS = 4  # what is still accepted when typed (rows made before NEW_PIN_MIN_DIGITS)
NEW_PIN_MIN_DIGITS = 6  # what a new or changed PIN must have
PIN_MAX_DIGITS = 12
PIN_PATTERN = re.compile(rf"^[0-9]{{{PIN_MIN_DIGITS},{PIN_MAX_DIGITS}}}$")
NEW_PIN_PATTERN = re.compile(rf"^[0-9]{{{NEW_PIN_MIN_DIGITS},{PIN_MAX_DIGITS}}}$")
HINT_DIGITS = 2
MAX_CANDIDATES = 32  # hashes checked per typed PIN at most: ~1.6 s of one worker thread in the worst case

TRIES_PER_CALL = 3
FAILURES_PER_SOURCE = 5
FAILURE_WINDOW_S = 600.0
BLOCK_S = 900.0
MAX_SOURCES = 10_000
FAILURES_PER_PIN = 10
PIN_WINDOW_S = 600.0
PIN_LOCK_S = 3600.0


def pin_problem(pin: str) -> str | None:
    """Why `pin` cannot be a typed PIN, in words; None if it can (old 4- and 5-digit rows still work)."""
    if not PIN_PATTERN.fullmatch(pin):
        return f"a PIN is {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits (0-9), nothing else"
    return None


def new_pin_problem(pin: str) -> str | None:
    """Why `pin` cannot be given to a speaker, in words for the operator; None if it can."""
    if not NEW_PIN_PATTERN.fullmatch(pin):
        return (
            f"a new PIN is {NEW_PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits (0-9), nothing else: "
            "shorter PINs are too easy to guess"
        )
    return None


def hint_of(pin: str) -> str:
    return pin[-HINT_DIGITS:]


@dataclass(frozen=True)
class SpeakerGrant:
    """What a right PIN allows: who is speaking, on which zones (empty: all), at which priority. `weak`: the PIN
    has fewer than `NEW_PIN_MIN_DIGITS` digits (made before that rule). `language`: of the prompts from now on."""

    pin_id: int
    label: str
    zone_ids: tuple[int, ...]
    priority: Priority
    user_id: int | None
    weak: bool = False
    language: str = "en"


@dataclass(frozen=True)
class Candidate:
    """A row a typed PIN may match: its hash and what it grants."""

    pin_id: int
    pin_hash: str
    label: str
    pin_hint: str
    zone_ids: tuple[int, ...]
    priority: Priority
    user_id: int | None
    language: str = "en"

    def grant(self, pin: str) -> SpeakerGrant:
        return SpeakerGrant(self.pin_id, self.label, self.zone_ids, self.priority, self.user_id,
                            weak=len(pin) < NEW_PIN_MIN_DIGITS, language=self.language)  # fmt: skip


def _valid_at(now: dt.datetime) -> Any:
    return (
        SpeakerPin.enabled.is_(True),
        or_(SpeakerPin.valid_from.is_(None), SpeakerPin.valid_from <= now),
        or_(SpeakerPin.valid_until.is_(None), SpeakerPin.valid_until > now),
    )


def _alert_event(row: Alert) -> dict[str, Any]:
    return {
        "type": "alert",
        "alert": {
            "id": row.id,
            "site": None,
            "kind": row.kind,
            "severity": row.severity,
            "message": row.message,
            "raised_at": row.raised_at.isoformat(),
            "cleared_at": None,
        },
    }


class PinStore:
    """The speaker PINs in the hub's database. `publish`, if given, receives `{"type": "alert", ...}` events for
    the console when a `pin_abuse` alert is raised. Hashes are checked in `pool` (default: the process's)."""

    def __init__(
        self,
        database: Database,
        *,
        max_candidates: int = MAX_CANDIDATES,
        publish: Callable[[dict[str, Any]], None] | None = None,
        pool: HashPool | None = None,
    ) -> None:
        self.db = database
        self.max_candidates = max_candidates
        self.publish = publish
        self.pool = pool
        self._count_lock = threading.Lock()
        self.hash_checks = 0  # Argon2 verifications made for typed PINs (the cost an attacker can make us pay)

    def _pool(self) -> HashPool:
        return self.pool if self.pool is not None else default_pool()

    # -- checking a typed PIN -----------------------------------------------------------------------------------
    async def candidates(self, pin: str, now: dt.datetime) -> list[Candidate]:
        """The rows valid at `now` (timezone-aware) that `pin` could match; none for a malformed PIN."""
        if now.tzinfo is None:
            raise ValueError("verify() needs a timezone-aware time")
        if pin_problem(pin) is not None:
            return []
        return await asyncio.to_thread(self._candidates, pin, now)

    def _candidates(self, pin: str, now: dt.datetime) -> list[Candidate]:
        with self.db.session() as s:
            query = (
                select(SpeakerPin)
                .where(SpeakerPin.pin_hint == hint_of(pin), *_valid_at(now))
                .order_by(SpeakerPin.id.desc())
                .limit(self.max_candidates)
            )
            rows = list(s.scalars(query))
            return [Candidate(r.id, r.pin_hash, r.label, r.pin_hint, tuple(int(z) for z in r.zone_ids or ()),
                              Priority(r.priority), r.user_id, r.language or "en") for r in rows]  # fmt: skip

    async def match(self, pin: str, candidates: Sequence[Candidate]) -> Candidate | None:
        """The first of `candidates` whose hash `pin` matches, checked in the hash pool. Raises `HashPoolBusy`."""
        return await self._pool().run(self._match, pin, tuple(candidates))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.hash_checks += n

    def _match(self, pin: str, candidates: tuple[Candidate, ...]) -> Candidate | None:
        if pin_problem(pin) is not None or not candidates:
            # Malformed input, or no row with these last digits, costs as long as a wrong PIN: no timing tells
            # them apart.
            self._count(1)
            verify_dummy(pin or "-")
            return None
        for i, c in enumerate(candidates):
            if verify_password(c.pin_hash, pin):
                self._count(i + 1)
                return c
        self._count(len(candidates))
        return None

    async def mark_used(self, grant: SpeakerGrant, now: dt.datetime, source: str) -> None:
        """Note that the PIN went live at `now`; a weak PIN is audited so the console can list it."""
        await asyncio.to_thread(self._mark_used, grant, now, source)

    def _mark_used(self, grant: SpeakerGrant, now: dt.datetime, source: str) -> None:
        with self.db.session() as s:
            s.execute(update(SpeakerPin).where(SpeakerPin.id == grant.pin_id).values(last_used_at=now))
            if grant.weak:
                log.warning("speaker PIN %d (%s) has fewer than %d digits: rotate it", grant.pin_id, grant.label,
                            NEW_PIN_MIN_DIGITS)  # fmt: skip
                audit(s, None, "pin.weak", f"pin:{grant.pin_id}", {"digits_below": NEW_PIN_MIN_DIGITS}, source[:64])

    async def verify(self, pin: str, now: dt.datetime) -> SpeakerGrant | None:
        """The grant of the enabled PIN valid at `now` (timezone-aware) that `pin` matches, else None. No limits:
        for operators' tools and tests; callers go through `PinGate`."""
        found = await self.match(pin, await self.candidates(pin, now))
        if found is None:
            return None
        grant = found.grant(pin)
        await self.mark_used(grant, now, "")
        return grant

    # -- giving PINs ----------------------------------------------------------------------------------------------
    def problem_with_new(self, pin: str, *, exclude_id: int | None = None) -> str | None:
        """Why `pin` cannot be given to a speaker now, in words for the operator; None if it can. Slow (it checks
        the hashes of the enabled PINs with the same last two digits): call it from a worker thread."""
        problem = new_pin_problem(pin)
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

    def weak_ids(self) -> set[int]:
        """PINs seen in use with fewer than `NEW_PIN_MIN_DIGITS` digits and not rotated since."""
        weak: set[int] = set()
        with self.db.session() as s:
            rows = s.execute(
                select(AuditEntry.action, AuditEntry.target)
                .where(AuditEntry.action.in_(("pin.weak", "pin.rotate")), AuditEntry.target.like("pin:%"))
                .order_by(AuditEntry.id)
            )
            for action, target in rows:
                with contextlib.suppress(ValueError):
                    pin_id = int(str(target).removeprefix("pin:"))
                    (weak.add if action == "pin.weak" else weak.discard)(pin_id)
        return weak

    # -- failures and alerts --------------------------------------------------------------------------------------
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
            return _alert_event(row)

    async def record_lock(self, lock: PinLock, candidates: Iterable[Candidate], source: str) -> None:
        """Raise the `pin_abuse` alert of a PIN that has just been locked. Never raises."""
        about = next((c for c in candidates if c.pin_id == lock.pin_id), None)
        name = f"“{about.label}” (ending {about.pin_hint})" if about is not None else f"{lock.pin_id}"
        message = (
            f"speaker PIN {name} is being guessed: {lock.failures} wrong PINs in {lock.window_s / 60:.0f} min "
            f"from {lock.sources} source{'s' if lock.sources != 1 else ''}, the last from {source}; locked for "
            f"{lock.lock_s / 60:.0f} min (even the right PIN is refused). Unlock it or rotate it on the PINs page."
        )
        try:
            event = await asyncio.to_thread(self._record_lock, lock.pin_id, message, source)
        except Exception:
            log.exception("cannot record the lock of PIN %d", lock.pin_id)
            return
        if self.publish is not None:
            self.publish(event)

    def _record_lock(self, pin_id: int, message: str, source: str) -> dict[str, Any]:
        log.warning("%s", message)
        with self.db.session() as s:
            audit(s, None, "pin.lock", f"pin:{pin_id}", {"source": source}, source[:64])
            row = Alert(site_id=None, kind="pin_abuse", severity="critical", message=message)
            s.add(row)
            s.flush()
            return _alert_event(row)

    async def record_locked_match(self, pin_id: int, source: str) -> None:
        """The right PIN of a locked row was typed (refused like a wrong one): the operators should know the real
        speaker, or someone who has the PIN, is trying. Never raises."""
        try:
            await asyncio.to_thread(self._record_locked_match, pin_id, source)
        except Exception:
            log.exception("cannot record a locked PIN's use")

    def _record_locked_match(self, pin_id: int, source: str) -> None:
        log.warning("the right PIN %d was typed from %s while it is locked: refused", pin_id, source)
        with self.db.session() as s:
            audit(s, None, "pin.locked_use", f"pin:{pin_id}", {"source": source}, source[:64])


# -- the guard (sans-IO) ------------------------------------------------------------------------------------------
@dataclass
class _Source:
    failures: deque[float]  # confirmed failures, and the attempt in flight (counted before it is checked)
    blocked_until: float = 0.0
    in_flight: bool = False


@dataclass
class _Row:
    failures: deque[tuple[float, str]]  # (time, source), counted before the check like a source's
    locked_until: float = 0.0


@dataclass(frozen=True)
class PinLock:
    """A PIN row that has just been locked: what the alert says."""

    pin_id: int
    failures: int
    sources: int
    window_s: float
    lock_s: float


@dataclass(frozen=True)
class Refusal:
    """An attempt refused before anything was counted or checked: `blocked` (the source, for `wait` s) or `busy`
    (the source has an attempt in flight)."""

    reason: Literal["blocked", "busy"]
    wait: float = 0.0


@dataclass(eq=False)
class Attempt:
    """One attempt admitted by `PinGuard.begin`: end it with exactly one of `succeed`, `fail` or `cancel`."""

    source: str
    at: float
    pin_ids: tuple[int, ...] = ()
    usable: frozenset[int] = frozenset()
    done: bool = False


@dataclass(frozen=True)
class FailureEffects:
    source_blocked: bool
    locked: tuple[PinLock, ...] = field(default_factory=tuple)


class PinGuard:
    """Attempts and failed PINs per source and per PIN row (sans-IO: `now` in seconds from any monotonic clock).

    A source with `failures` failures within `window_s` is refused for `block_s`; a source may have one attempt
    in flight. A PIN row with `pin_failures` failures within `pin_window_s` is locked for `pin_lock_s`. Memory is
    bounded: past `max_sources` the least recently failing sources are forgotten (a forgotten source is one an
    attacker could only have reached by failing from 10,000 other addresses since); rows are the database's."""

    def __init__(
        self,
        *,
        tries_per_call: int = TRIES_PER_CALL,
        failures: int = FAILURES_PER_SOURCE,
        window_s: float = FAILURE_WINDOW_S,
        block_s: float = BLOCK_S,
        max_sources: int = MAX_SOURCES,
        pin_failures: int = FAILURES_PER_PIN,
        pin_window_s: float = PIN_WINDOW_S,
        pin_lock_s: float = PIN_LOCK_S,
    ) -> None:
        if (
            min(tries_per_call, failures, max_sources, pin_failures) < 1
            or min(window_s, block_s, pin_window_s, pin_lock_s) <= 0
        ):
            raise ValueError("PinGuard limits must be positive")
        self.tries_per_call = tries_per_call
        self.failures = failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_sources = max_sources
        self.pin_failures = pin_failures
        self.pin_window_s = pin_window_s
        self.pin_lock_s = pin_lock_s
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._rows: dict[int, _Row] = {}

    def __len__(self) -> int:
        return len(self._sources)

    # -- sources ------------------------------------------------------------------------------------------------
    def _current(self, source: str, now: float) -> _Source | None:
        entry = self._sources.get(source)
        if entry is None:
            return None
        while entry.failures and now - entry.failures[0] >= self.window_s:
            entry.failures.popleft()
        if not entry.failures and now >= entry.blocked_until and not entry.in_flight:
            del self._sources[source]  # nothing left to remember
            return None
        return entry

    def _entry(self, source: str, now: float) -> _Source:
        entry = self._current(source, now)
        if entry is None:
            entry = self._sources[source] = _Source(deque())
        self._sources.move_to_end(source)
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return entry

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds `source` is still refused for; 0 if it may try."""
        entry = self._current(source, now)
        return 0.0 if entry is None else max(0.0, entry.blocked_until - now)

    def allowed(self, source: str, now: float) -> bool:
        return self.blocked_for(source, now) == 0.0

    def in_flight(self, source: str) -> bool:
        entry = self._sources.get(source)
        return entry is not None and entry.in_flight

    def _block_if_over(self, entry: _Source, now: float) -> bool:
        if len(entry.failures) >= self.failures and now >= entry.blocked_until:
            entry.blocked_until = now + self.block_s
            entry.failures.clear()  # after the block, a fresh count
            return True
        return False

    def on_failure(self, source: str, now: float) -> bool:
        """Count a wrong PIN from `source` outside any attempt; True if this failure has just blocked it."""
        entry = self._entry(source, now)
        entry.failures.append(now)
        return self._block_if_over(entry, now)

    # -- attempts -----------------------------------------------------------------------------------------------
    def begin(self, source: str, now: float) -> Attempt | Refusal:
        """Admit one attempt from `source`, counting it as a failure until it is known to be right."""
        entry = self._current(source, now)
        if entry is not None and entry.blocked_until > now:
            return Refusal("blocked", entry.blocked_until - now)
        if entry is not None and entry.in_flight:
            return Refusal("busy")
        entry = self._entry(source, now)
        entry.in_flight = True
        entry.failures.append(now)
        return Attempt(source, now)

    def charge(self, attempt: Attempt, pin_ids: Sequence[int], now: float) -> frozenset[int]:
        """Count `attempt` against the rows it is about to be checked against; the rows it may still be granted
        by (not locked, and within their budget counting the attempts in flight)."""
        usable: set[int] = set()
        for pin_id in pin_ids:
            row = self._row(pin_id, now)
            if row.locked_until <= now and len(row.failures) < self.pin_failures:
                usable.add(pin_id)
            row.failures.append((now, attempt.source))
        attempt.pin_ids = tuple(pin_ids)
        attempt.usable = frozenset(usable)
        return attempt.usable

    def _row(self, pin_id: int, now: float) -> _Row:
        row = self._rows.get(pin_id)
        if row is None:
            row = self._rows[pin_id] = _Row(deque(maxlen=4 * self.pin_failures))
        while row.failures and now - row.failures[0][0] >= self.pin_window_s:
            row.failures.popleft()
        return row

    def _undo(self, attempt: Attempt) -> None:
        entry = self._sources.get(attempt.source)
        if entry is not None:
            entry.in_flight = False
            with contextlib.suppress(ValueError):  # already aged out of the window
                entry.failures.remove(attempt.at)
            if not entry.failures and entry.blocked_until <= attempt.at:
                del self._sources[attempt.source]  # nothing left to remember
        for pin_id in attempt.pin_ids:
            row = self._rows.get(pin_id)
            if row is not None:
                with contextlib.suppress(ValueError):
                    row.failures.remove((attempt.at, attempt.source))

    def succeed(self, attempt: Attempt) -> None:
        """The attempt was right: it was never a failure."""
        if not attempt.done:
            attempt.done = True
            self._undo(attempt)

    def cancel(self, attempt: Attempt) -> None:
        """The attempt was not checked (no worker free): it counts for nothing."""
        self.succeed(attempt)

    def fail(self, attempt: Attempt, now: float) -> FailureEffects:
        """The attempt was wrong (or its answer is unknown): the counts stand. What it has just blocked or locked."""
        if attempt.done:
            return FailureEffects(False)
        attempt.done = True
        entry = self._sources.get(attempt.source)
        blocked = False
        if entry is not None:
            entry.in_flight = False
            blocked = self._block_if_over(entry, now)
        locked: list[PinLock] = []
        for pin_id in attempt.pin_ids:
            row = self._row(pin_id, now)
            if len(row.failures) >= self.pin_failures and now >= row.locked_until:
                sources = len({s for _, s in row.failures})
                locked.append(PinLock(pin_id, len(row.failures), sources, self.pin_window_s, self.pin_lock_s))
                row.locked_until = now + self.pin_lock_s
                row.failures.clear()  # guesses during the lock count afresh: still guessing at its end, locked again
        return FailureEffects(blocked, tuple(locked))

    # -- PIN rows (for operators) -------------------------------------------------------------------------------
    def pin_locked_for(self, pin_id: int, now: float) -> float:
        row = self._rows.get(pin_id)
        return 0.0 if row is None else max(0.0, row.locked_until - now)

    def pin_failures_recent(self, pin_id: int, now: float) -> int:
        return len(self._row(pin_id, now).failures) if pin_id in self._rows else 0

    def unlock_pin(self, pin_id: int) -> bool:
        """An operator's decision: forget the row's lock and failures. True if it was locked or counting."""
        return self._rows.pop(pin_id, None) is not None


Outcome = Literal["granted", "retry", "hangup", "blocked", "busy", "overloaded"]


@dataclass(frozen=True)
class PinResult:
    """`granted`: go live with `grant`. `retry`: say "wrong PIN" and listen again. `hangup`: the call used its
    tries. `blocked`: the source is refused (its PIN was not checked) for `retry_after` s. `busy`: this source
    already has an attempt being checked; `overloaded`: no worker is free to check it: try again shortly (neither
    counts as a try)."""

    outcome: Outcome
    grant: SpeakerGrant | None = None
    tries_left: int = 0
    retry_after: float = 0.0


OVERLOADED_RETRY_S = 1.0


class PinGate:
    """One telephone call's (or browser offer's) PIN entry, over a shared store and guard."""

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
        if self.tries_left == 0:
            return PinResult("hangup")
        admitted = self.guard.begin(self.source, now_s)
        if isinstance(admitted, Refusal):
            return PinResult(admitted.reason, None, self.tries_left, admitted.wait)
        attempt = admitted
        self.tries += 1
        try:
            candidates = await self.store.candidates(pin, now)
            usable = self.guard.charge(attempt, [c.pin_id for c in candidates], now_s)
            try:
                found = await self.store.match(pin, candidates)
            except HashPoolBusy:
                self.guard.cancel(attempt)
                self.tries -= 1
                return PinResult("overloaded", None, self.tries_left, OVERLOADED_RETRY_S)
            if found is not None and found.pin_id in usable:
                self.guard.succeed(attempt)
                grant = found.grant(pin)
                await self.store.mark_used(grant, now, self.source)
                return PinResult("granted", grant, self.tries_left)
        finally:
            # Any way out but a grant or an unchecked refusal (a wrong PIN, a database error, a cancelled call
            # whose check may have run) leaves the attempt counted.
            effects = self.guard.fail(attempt, now_s)
        if found is not None:
            await self.store.record_locked_match(found.pin_id, self.source)
        outcome: Outcome = "blocked" if effects.source_blocked else ("hangup" if self.tries_left == 0 else "retry")
        await self.store.record_failure(self.source, tries=self.tries, outcome=outcome, alert=outcome != "retry")
        for lock in effects.locked:
            await self.store.record_lock(lock, candidates, self.source)
        retry_after = self.guard.blocked_for(self.source, now_s) if outcome == "blocked" else 0.0
        return PinResult(outcome, None, self.tries_left, retry_after)
