"""One site's microphone (talkback) shared by every live call that mixes it into what its caller hears."""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING

from citycast.media.audio import FRAME_SAMPLES
from citycast.media.render import Samples

if TYPE_CHECKING:
    from citycast.hub.talkback import TalkbackTap

TALKBACK_BACKLOG = 25  # blocks (0.5 s) a slower call may lag behind the fastest one on the same talkback


class TalkbackFeed:
    """One site's microphone shared by every call that mixes it: a tap's `next_block` consumes its audio, so two
    calls reading the tap directly would each hear every other block. The fastest reader pulls from the tap;
    the others get the same blocks from a short backlog (a reader further behind skips to the newest)."""

    def __init__(self, tap: TalkbackTap) -> None:
        self.tap = tap
        self._blocks: deque[Samples] = deque()
        self._first = 0  # index of _blocks[0] in the tap's sequence of blocks

    @classmethod
    def of(cls, tap: TalkbackTap) -> TalkbackFeed:
        feed = _FEEDS.get(tap)
        if feed is None:
            feed = _FEEDS[tap] = cls(tap)
        return feed

    def read(self, cursor: int | None) -> tuple[Samples, int]:
        """The block at `cursor` (None: a new reader) and the reader's next cursor."""
        end = self._first + len(self._blocks)
        if cursor is None or not self._first <= cursor <= end:
            cursor = end
        if cursor == end:
            self._blocks.append(self.tap.next_block(FRAME_SAMPLES))
            if len(self._blocks) > TALKBACK_BACKLOG:
                self._blocks.popleft()
                self._first += 1
        return self._blocks[cursor - self._first], cursor + 1


_FEEDS: weakref.WeakKeyDictionary[TalkbackTap, TalkbackFeed] = weakref.WeakKeyDictionary()
