"""Jitter buffer: packets of one stream, keyed by sequence number, waiting for their turn to be decoded.

Playout pulls packets in sequence order when the DAC needs them; arrival order does not matter. The buffer only
holds a bounded window ahead of the next needed sequence number, so a flood of far-future packets cannot grow it.
"""

from __future__ import annotations

from enum import Enum


class Put(Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    LATE = "late"
    TOO_FAR = "too_far"


class JitterBuffer:
    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self.next_seq: int | None = None  # the next sequence number playout will ask for
        self.newest_seq: int | None = None

    def reset(self, next_seq: int | None = None) -> None:
        self._packets.clear()
        self.next_seq = next_seq
        self.newest_seq = None

    def put(self, seq: int, packet: bytes) -> Put:
        if self.next_seq is not None:
            if seq < self.next_seq:
                return Put.LATE
            if seq >= self.next_seq + self.capacity:
                return Put.TOO_FAR
        if seq in self._packets:
            return Put.DUPLICATE
        self._packets[seq] = packet
        if self.newest_seq is None or seq > self.newest_seq:
            self.newest_seq = seq
        return Put.OK

    def take(self, seq: int) -> bytes | None:
        """The packet for `seq` (None if missing); everything before `seq` is forgotten."""
        if self.next_seq is None or seq > self.next_seq:
            for old in [s for s in self._packets if s < seq]:
                del self._packets[old]
        self.next_seq = seq + 1
        return self._packets.pop(seq, None)

    def lowest_seq(self) -> int | None:
        return min(self._packets) if self._packets else None

    def discard_before(self, seq: int) -> int:
        old = [s for s in self._packets if s < seq]
        for s in old:
            del self._packets[s]
        self.next_seq = seq
        return len(old)

    def has_from(self, seq: int) -> bool:
        return self.newest_seq is not None and self.newest_seq >= seq and any(s >= seq for s in self._packets)

    def __len__(self) -> int:
        return len(self._packets)
