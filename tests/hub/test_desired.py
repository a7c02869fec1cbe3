"""The hub sends a site its desired state again when the site reports playing another channel: a publish lost on
the way (the hub died between writing its store and publishing, or the city's leafnode came back before the site's
interest had crossed it) costs seconds, not the site's next one-minute refresh."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from tests.helpers import wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, free_port
from citycast.hub.desired import NUDGE_INTERVAL_NS, DesiredStore
from citycast.protocol.desired import DesiredState, desired_bucket
from citycast.protocol.subjects import Subjects
from citycast.site.desired import DesiredWatcher
from citycast.tasks import cancel_and_wait

SUBJECTS = Subjects()
S = 1_000_000_000


async def test_a_site_that_missed_a_publish_is_sent_its_desired_state_again(tmp_path: Path) -> None:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    hub = await nats.connect(server.url)
    site = await nats.connect(server.url)
    task = None
    try:
        store = DesiredStore(hub, SUBJECTS)
        await store.open()
        await store.put("s1", DesiredState(channel=1))
        watcher = DesiredWatcher(site, SUBJECTS, "s1", lambda s: None, retry_s=0.2, refresh_s=3600)
        task = asyncio.create_task(watcher.run())
        await wait_until(lambda: watcher.current == DesiredState(channel=1), "the site to follow channel 1", timeout=5)
        # The hub wrote channel 7 to its store and died before publishing it; the restarted hub learns it from
        # the store, publishes nothing (it is already written), and the site, whose connection never dropped,
        # asks again only at its next refresh.
        await store.close()
        kv = await hub.jetstream().key_value(desired_bucket(SUBJECTS))
        await kv.put("s1", DesiredState(channel=7).to_json())
        restarted = DesiredStore(hub, SUBJECTS)
        await restarted.open()
        assert not await restarted.put("s1", DesiredState(channel=7))  # already written: not published again
        await asyncio.sleep(1.0)
        assert watcher.current == DesiredState(channel=1)  # the site did miss it

        # Its next reports say channel 1: the first is answered, the next ones within 2 s are not.
        now = 1_800_000_000 * S
        assert restarted.nudge("s1", 1, now)
        assert not restarted.nudge("s1", 1, now + NUDGE_INTERVAL_NS - 1)
        await wait_until(lambda: watcher.current == DesiredState(channel=7), "the site to take channel 7", timeout=5)
        assert not restarted.nudge("s1", 7, now + 10 * S)  # doing what is wished: nothing sent
        assert not restarted.nudge("s2", 3, now)  # nothing wished for it
        assert restarted.nudges == 1
        # Sent again to a site that already has that revision: it takes nothing twice.
        changes: list[DesiredState] = []
        watcher.on_change = changes.append
        assert restarted.nudge("s1", 1, now + 20 * S)
        await settle(hub)
        await asyncio.sleep(0.5)
        assert changes == []
        await restarted.close()
    finally:
        if task is not None:
            await cancel_and_wait(task)
        await hub.close()
        await site.close()
        server.stop()
