"""A site follows its desired state from the hub over plain NATS: at start, on change, after the hub's store was
started afresh (revisions begin again), and never going back to an older value."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from tests.helpers import wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, free_port
from citycast.hub.desired import DesiredStore
from citycast.protocol.desired import REVISION_HEADER, DesiredState, desired_bucket
from citycast.protocol.subjects import Subjects
from citycast.site.desired import DesiredWatcher
from citycast.tasks import cancel_and_wait

SUBJECTS = Subjects()


async def test_follows_changes_ignores_older_values_and_survives_a_fresh_store(tmp_path: Path) -> None:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    hub = await nats.connect(server.url)
    site = await nats.connect(server.url)
    task = None
    try:
        store = DesiredStore(hub, SUBJECTS)
        await store.open()
        seen: list[DesiredState] = []
        watcher = DesiredWatcher(site, SUBJECTS, "s1", seen.append, retry_s=0.2, refresh_s=0.5)
        task = asyncio.create_task(watcher.run())
        await wait_until(lambda: watcher.asked >= 1, "the watcher to ask", timeout=5)
        assert seen == []  # nothing wished yet: an empty answer, nothing applied
        for channel in (1, 2, 3):
            await store.put("s1", DesiredState(channel=channel))
        await wait_until(lambda: watcher.current == DesiredState(channel=3), "the change to be followed", timeout=5)
        newest = watcher.revision
        # A stale value (an answer that crossed a newer publish) never replaces the newer one.
        await hub.publish(SUBJECTS.desired("s1"), DesiredState(channel=99).to_json(), headers={REVISION_HEADER: "1"})
        await hub.publish(SUBJECTS.desired("s1"), b"not json", headers={REVISION_HEADER: str(newest + 1)})
        await settle(hub)
        # Both arrive in order on one connection: once the second is counted, the first was handled.
        await wait_until(lambda: watcher.bad_values >= 1, "the value that is not JSON to be counted", timeout=5)
        assert watcher.current == DesiredState(channel=3) and watcher.bad_values == 1
        # The hub's store is started afresh (its bucket lost): revisions begin at 1 again. The site believes two
        # answers in a row that agree, and converges within a refresh or two.
        await store.close()
        await hub.jetstream().delete_key_value(desired_bucket(SUBJECTS))
        fresh = DesiredStore(hub, SUBJECTS)
        await fresh.open()
        await fresh.put("s1", DesiredState(channel=5, muted=True))
        await wait_until(
            lambda: watcher.current == DesiredState(channel=5, muted=True), "the fresh store to converge", timeout=5
        )
        assert watcher.revision < newest
        assert DesiredState(channel=99) not in seen and seen[-1] == DesiredState(channel=5, muted=True)
        await fresh.close()
    finally:
        await cancel_and_wait(task)
        await site.close()
        await hub.close()
        server.stop()
