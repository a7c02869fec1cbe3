"""A nats-py client that hands a subscription's payloads to a plain function, straight from its parser.

nats-py delivers every message through a `Msg` object, a header parse, an asyncio queue and a task that awaits
the callback: 40-75 µs a message here, about as much as libopus takes to decode it. A site hears 50 audio
messages a second on each path and needs only their bytes, so its audio subscriptions skip all of that:
`subscribe_direct(subject, on_data)` calls `on_data(payload)` inside the read loop, synchronously. Everything else
(reconnects, credentials, TLS, the subscription's replay to a new server, drain) stays nats-py's, because the
subscription is an ordinary one that has no callback of its own.

`on_data` must be quick and must not raise: it runs in the connection's read loop, before the next message is
parsed. One that raises is logged and counted (`direct_errors`), and the connection keeps reading.

Built on two private methods of nats-py 2.16, `_process_msg(sid, subject, reply, data, headers)` and
`_remove_sub(sid, max_msgs)` (pyproject.toml admits 2.16 up to 3); `tests/bus/test_direct.py` exercises both against
a real nats-server, so a release that changes them fails there, not on a loudspeaker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

DataCallback = Callable[[bytes], None]


class DirectClient(Client):
    """nats-py's `Client`, plus `subscribe_direct`."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DataCallback] = {}
        self.direct_errors = 0

    async def subscribe_direct(self, subject: str, on_data: DataCallback) -> Subscription:
        """Subscribe `subject`; every message's payload goes to `on_data(payload)` from the read loop. Headers and
        reply subjects are not passed on. Unsubscribe (or drain) the returned subscription as any other."""
        # No callback: nats-py starts no task for it; messages never reach its queue (see _process_msg).
        sub = await self.subscribe(subject)
        self._direct[sub._id] = on_data
        return sub

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        on_data = self._direct.get(sid)
        if on_data is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            on_data(data)
        except Exception:  # never let one message stop the connection's reading
            self.direct_errors += 1
            log.exception("direct subscription %d: handler failed on a %d-byte message", sid, len(data))
