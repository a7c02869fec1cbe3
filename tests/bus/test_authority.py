"""Least privilege on a real nats-server in operator (JWT) mode: what a site, ingest and the hub may do."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from tests.helpers import (
    SUBJECTS,
    Watched,
    connect,
    let_time_pass,
    nothing_arrives,
    request_answered,
    site_creds,
    start_auth_nats,
    wait_until,
)

from citycast.bus import jwt
from citycast.bus.authority import (
    INGEST_INBOX_PREFIX,
    AuthorityError,
    NatsAuthority,
    site_inbox_prefix,
    site_permissions,
)
from citycast.bus.connection import settle
from citycast.bus.jwt import KeyKind
from citycast.bus.server import EmbeddedNats, free_port
from citycast.hub.desired import DesiredStore
from citycast.protocol.desired import DesiredState, desired_bucket
from citycast.protocol.subjects import Subjects
from citycast.site.desired import DesiredWatcher
from citycast.tasks import cancel_and_wait


@pytest.fixture
async def hub(auth_nats: EmbeddedNats, authority: NatsAuthority) -> AsyncIterator[Watched]:
    conn = await connect(auth_nats.url, authority.hub_creds_path)
    yield conn
    await conn.nc.close()


async def test_anonymous_and_unknown_users_are_refused(
    auth_nats: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(auth_nats.url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=1)
    # A user signed by some other account key is not trusted either.
    seed = jwt.new_seed(KeyKind.USER)
    stranger = tmp_path / "stranger.creds"
    jwt.write_private(
        stranger, jwt.creds_text(jwt.user_jwt(jwt.new_seed(KeyKind.ACCOUNT), jwt.public_key(seed), "x"), seed)
    )
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(auth_nats.url, user_credentials=str(stranger), allow_reconnect=False, connect_timeout=3)
    assert auth_nats.log_text().count("authentication error") >= 2


async def test_site_can_hear_audio_and_its_commands_and_report(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    creds, _ = site_creds(authority, "s1", tmp_path)  # minted while the server runs: no restart needed
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    audio = await site.nc.subscribe("citycast.audio.*")
    cmd = await site.nc.subscribe("citycast.cmd.s1")
    telemetry = await hub.nc.subscribe("citycast.telemetry.*")
    await settle(site.nc)
    await settle(hub.nc)
    # The publisher joins after the subscriber, as an address starts after its sites are up. (The other order
    # loses the first message now and then on nats-server 2.15 in JWT mode; see tests/bus/test_rawnats.py.)
    ingest = await connect(auth_nats.url, authority.ingest_creds_path, INGEST_INBOX_PREFIX)
    await ingest.nc.publish("citycast.audio.3", b"frame")
    await hub.nc.publish("citycast.cmd.s1", b"reload")
    await site.nc.publish("citycast.telemetry.s1", b"{}")
    assert (await audio.next_msg(timeout=3)).subject == "citycast.audio.3"
    assert (await cmd.next_msg(timeout=3)).data == b"reload"
    assert (await telemetry.next_msg(timeout=3)).subject == "citycast.telemetry.s1"
    # A request on its own inbox prefix gets its answer (the hub answers a time-like request).

    async def answer(msg: Msg) -> None:
        await msg.respond(b"now")

    responder = await hub.nc.subscribe("citycast.time.site.s1", cb=answer)
    await settle(hub.nc)
    assert (await request_answered(site.nc, "citycast.time.site.s1")).data == b"now"
    await responder.unsubscribe()
    await settle(site.nc)
    assert site.errors == [] and ingest.errors == []
    await site.nc.close()
    await ingest.nc.close()


async def test_site_follows_its_own_desired_state_and_no_one_elses(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    store = DesiredStore(hub.nc, SUBJECTS, reply_prefix=site_inbox_prefix)
    await store.open()
    await store.put("s1", DesiredState(channel=1))
    await store.put("s2", DesiredState(channel=2, volume=0.5))
    creds, _ = site_creds(authority, "s1", tmp_path)
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    seen: list[DesiredState] = []
    watcher = DesiredWatcher(site.nc, SUBJECTS, "s1", seen.append, retry_s=0.5)
    task = asyncio.create_task(watcher.run())
    try:
        await wait_until(lambda: len(seen) == 1, "the desired state asked for at start", timeout=5)
        assert seen == [DesiredState(channel=1)]
        await store.put("s1", DesiredState(channel=7, muted=True))  # published on change
        await store.put("s2", DesiredState(channel=8))  # another site's change is not delivered here
        await wait_until(lambda: len(seen) == 2, "s1's changed desired state", timeout=5)
        await let_time_pass(0.5)  # room for s2's change to arrive, were it delivered
        assert seen == [DesiredState(channel=1), DesiredState(channel=7, muted=True)]
    finally:
        await cancel_and_wait(task)
    # Another site's state is out of reach: neither its subject nor its get; and no JetStream at all.
    await site.nc.subscribe("citycast.desired.s2")
    await site.nc.publish("citycast.desired-get.s2", b"", reply=site.nc.new_inbox())
    with pytest.raises(nats.errors.Error):  # the request goes unanswered: the server dropped it
        await site.nc.jetstream(timeout=2).key_value(desired_bucket(SUBJECTS))
    # The server's own refusal, not a timeout, is the proof: it names the JetStream API subject it denied.
    js_api = f'publish to "$js.api.stream.info.kv_{desired_bucket(SUBJECTS)}"'
    await wait_until(
        lambda: any(js_api in v.lower() for v in site.violations()),
        "the server to refuse the JetStream API",
        timeout=5,
        detail=lambda: site.errors,
    )
    # Its own get with the answer aimed at an audio subject: the hub does not answer.
    audio = await hub.nc.subscribe("citycast.audio.1")
    await settle(hub.nc)
    await site.nc.publish("citycast.desired-get.s1", b"", reply="citycast.audio.1")
    await settle(site.nc)
    assert await nothing_arrives(audio)
    await wait_until(lambda: store.refused == 1, "the store to refuse the get aimed at audio", timeout=5)
    assert len(site.violations()) >= 3
    await site.nc.close()
    await store.close()


async def test_site_cannot_publish_audio(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    creds, _ = site_creds(authority, "s1", tmp_path)
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    audio = await hub.nc.subscribe("citycast.audio.>")
    await settle(hub.nc)
    await site.nc.publish("citycast.audio.1", b"a voice that is not ours")
    await settle(site.nc)
    await wait_until(lambda: site.violations(), "the server to refuse the site's audio", timeout=5)
    assert 'publish to "citycast.audio.1"' in site.violations()[0]
    with pytest.raises(nats.errors.TimeoutError):
        await audio.next_msg(timeout=0.5)
    # Ingest may.
    ingest = await connect(auth_nats.url, authority.ingest_creds_path, INGEST_INBOX_PREFIX)
    await ingest.nc.publish("citycast.audio.1", b"ok")
    assert (await audio.next_msg(timeout=3)).data == b"ok"
    await ingest.nc.publish("citycast.cmd.s1", b"no")  # but not commands
    await settle(ingest.nc)
    await wait_until(lambda: ingest.violations(), "the server to refuse ingest's command", timeout=5)
    await site.nc.close()
    await ingest.nc.close()


async def test_site_cannot_read_or_write_another_sites_subjects(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    creds, _ = site_creds(authority, "s1", tmp_path)
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    theirs = await site.nc.subscribe("citycast.cmd.s2")
    everything = await site.nc.subscribe("citycast.>")
    inboxes = await site.nc.subscribe("_INBOX.>")  # the hub's replies
    await settle(site.nc)
    telemetry = await hub.nc.subscribe("citycast.telemetry.*")
    await settle(hub.nc)
    await hub.nc.publish("citycast.cmd.s2", b"for s2 only")
    await hub.nc.publish("_INBOX.abc", b"a reply to the hub")
    await site.nc.publish("citycast.telemetry.s2", b"forged")
    await site.nc.publish("citycast.telemetry.s1", b"genuine")
    await settle(site.nc)
    await settle(hub.nc)
    assert (await telemetry.next_msg(timeout=3)).data == b"genuine"
    for sub in (theirs, everything, inboxes):
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)
    with pytest.raises(nats.errors.TimeoutError):
        await telemetry.next_msg(timeout=0.3)
    await wait_until(lambda: len(site.violations()) >= 4, "4 refusals", timeout=5, detail=lambda: site.violations())
    text = " ".join(site.violations()).lower()  # nats-py lower-cases the server's message
    assert '"citycast.cmd.s2"' in text and '"citycast.>"' in text and '"_inbox.>"' in text
    assert '"citycast.telemetry.s2"' in text
    await site.nc.close()


async def test_revoked_site_is_dropped_refused_and_stays_refused_after_restart(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    bad_creds, bad_key = site_creds(authority, "bad", tmp_path)
    good_creds, _ = site_creds(authority, "good", tmp_path)
    bad = await connect(auth_nats.url, bad_creds, site_inbox_prefix("bad"))
    good = await connect(auth_nats.url, good_creds, site_inbox_prefix("good"))
    await authority.revoke(bad_key, auth_nats.url)
    await asyncio.wait_for(bad.closed.wait(), 5)  # the live connection is dropped
    with pytest.raises(Exception, match=r"(?i)authorization|revoked"):
        await connect(auth_nats.url, bad_creds, site_inbox_prefix("bad"))
    await good.nc.publish("citycast.telemetry.good", b"{}")
    await settle(good.nc, 3)
    assert good.nc.is_connected
    with pytest.raises(ValueError, match="revoked"):
        authority.mint_site_jwt("bad", bad_key, SUBJECTS)
    await good.nc.close()
    await hub.nc.close()

    # The hub restarts: its authority reloads from disk and the server starts from a fresh state (the
    # resolver's own copy of the pushed JWT removed), so only our persisted revocations can keep it out.
    auth_nats.stop()
    reloaded = NatsAuthority.load_or_create(authority.dir)
    assert reloaded.revocations.keys() == {bad_key}
    assert reloaded.account_public == authority.account_public
    shutil.rmtree(reloaded.resolver_dir)
    restarted = start_auth_nats(reloaded, tmp_path / "nats2")
    try:
        with pytest.raises(Exception, match=r"(?i)authorization|revoked"):
            await connect(restarted.url, bad_creds, site_inbox_prefix("bad"))
        again = await connect(restarted.url, good_creds, site_inbox_prefix("good"))
        await again.nc.close()
    finally:
        restarted.stop()


async def test_revoke_fails_clearly_when_the_server_is_unreachable(authority: NatsAuthority) -> None:
    key = jwt.public_key(jwt.new_seed(KeyKind.USER))
    with pytest.raises(AuthorityError, match="cannot push"):
        await authority.revoke(key, f"nats://127.0.0.1:{free_port()}", timeout=1)
    # The revocation is kept all the same: the next server start carries it.
    assert key in NatsAuthority.load_or_create(authority.dir).revocations
    with pytest.raises(ValueError, match=r"not a user key|nkey"):
        await authority.revoke(jwt.public_key(jwt.new_seed(KeyKind.ACCOUNT)), "nats://127.0.0.1:1")


def test_mint_refuses_bad_names_and_keys(authority: NatsAuthority) -> None:
    key = jwt.public_key(jwt.new_seed(KeyKind.USER))
    for name in ("", "a.b", "a*", "a>", "a b", "x" * 65):
        with pytest.raises(ValueError, match="site name"):
            authority.mint_site_jwt(name, key, SUBJECTS)
    with pytest.raises(ValueError, match="nkey"):
        authority.mint_site_jwt("s1", "UNOTAKEY", SUBJECTS)
    with pytest.raises(ValueError, match="not a user key"):
        authority.mint_site_jwt("s1", jwt.public_key(jwt.new_seed(KeyKind.ACCOUNT)), SUBJECTS)
    claims = jwt.decode(authority.mint_site_jwt("s1", key, Subjects("x")))
    assert claims["sub"] == key and claims["iss"] == authority.account_public
    assert claims["nats"]["pub"]["allow"] == list(site_permissions("s1", Subjects("x")).pub)
    assert "x.telemetry.s1" in claims["nats"]["pub"]["allow"]


def test_keys_persist_privately(tmp_path: Path) -> None:
    first = NatsAuthority.load_or_create(tmp_path / "auth")
    second = NatsAuthority.load_or_create(tmp_path / "auth")
    assert (first.operator_public, first.account_public, first.system_public) == (
        second.operator_public,
        second.account_public,
        second.system_public,
    )
    assert (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "auth").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    hub = jwt.load_creds(first.hub_creds_path)
    assert jwt.public_key(hub.seed) == jwt.public_key(jwt.load_creds(second.hub_creds_path).seed)
    config = first.server_config()
    assert f"system_account: {first.system_public}" in config and "type: full" in config
    (tmp_path / "auth" / "account.nk").write_text("garbage")
    with pytest.raises(Exception, match="account nkey seed"):
        NatsAuthority.load_or_create(tmp_path / "auth")


def test_site_permissions_are_narrow() -> None:
    perms = site_permissions("s1", SUBJECTS)
    assert set(perms.sub) == {"citycast.audio.*", "citycast.cmd.s1", "citycast.desired.s1", "_INBOX_site.s1.>"}
    assert "citycast.telemetry.s1" in perms.pub
    assert not any(p.startswith("citycast.audio") or p.startswith("citycast.cmd") for p in perms.pub)
    assert not any(p.endswith(">") for p in perms.pub)
    assert not any(p.startswith("$JS.") for p in perms.pub)  # no JetStream: the hub hands desired state out
    assert "citycast.desired-get.s1" in perms.pub and "citycast.desired.s1" in perms.sub


async def test_a_site_jwt_expires_the_server_drops_the_connection_and_refuses_it(
    auth_nats: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> None:
    authority.site_jwt_lifetime_s = 2
    creds, _ = site_creds(authority, "s1", tmp_path)
    claims = jwt.decode(jwt.load_creds(creds).jwt)
    assert claims["exp"] - claims["iat"] == 2
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    await site.nc.publish("citycast.telemetry.s1", b"{}")
    await settle(site.nc, 3)
    async with asyncio.timeout(10):  # the server closes it at the second the JWT expires
        await site.closed.wait()
    assert "expired" in str(site.nc.last_error).lower(), site.nc.last_error
    # the server drops the connection at `exp` but judges a new one by whole seconds (valid while now <= exp)
    await let_time_pass(max(0.0, claims["exp"] + 1.05 - time.time()))
    with pytest.raises(Exception, match=r"(?i)authorization|expired"):
        await connect(auth_nats.url, creds, site_inbox_prefix("s1"))


async def test_a_site_is_held_to_its_payload_and_subscription_limits(
    auth_nats: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> None:
    creds, _ = site_creds(authority, "s1", tmp_path)
    limits = jwt.decode(jwt.load_creds(creds).jwt)["nats"]
    assert (limits["payload"], limits["subs"]) == (8192, 16)
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    # as many subscriptions as it needs, and more, but not without bound
    for channel in range(1, 17):
        await site.nc.subscribe(SUBJECTS.audio(channel))
    await settle(site.nc, 3)
    assert not site.errors
    # a telemetry report of 8 KB passes
    await site.nc.publish("citycast.telemetry.s1", b"x" * 8192)
    await settle(site.nc, 3)
    assert site.nc.is_connected
    # the server refuses a 17th subscription (nats-py then gives the connection up)
    await site.nc.subscribe(SUBJECTS.audio(17))
    async with asyncio.timeout(5):
        await site.closed.wait()
    assert "maximum subscriptions" in str(site.nc.last_error).lower(), site.nc.last_error
    # one byte over the payload limit and the server closes the connection
    site = await connect(auth_nats.url, creds, site_inbox_prefix("s1"))
    await site.nc.publish("citycast.telemetry.s1", b"x" * 8193)
    async with asyncio.timeout(5):
        await site.closed.wait()
    assert "maximum payload" in str(site.nc.last_error).lower(), site.nc.last_error


async def test_the_data_limit_of_a_user_jwt_is_not_enforced(
    auth_nats: EmbeddedNats, authority: NatsAuthority, hub: Watched, tmp_path: Path
) -> None:
    """Measured, not assumed: nats-server reads `payload` and `subs` from a user JWT but meters no bytes per
    user, so `data` gives no data-rate limit (that is why site JWTs leave it at -1)."""
    seed = jwt.new_seed(KeyKind.USER)
    token = jwt.user_jwt(authority.account_seed, jwt.public_key(seed), "site:s1", site_permissions("s1", SUBJECTS),
                         limits=jwt.UserLimits(data=1000))  # fmt: skip
    path = tmp_path / "s1.creds"
    jwt.write_private(path, jwt.creds_text(token, seed))
    got: list[int] = []

    async def count(msg: Msg) -> None:
        got.append(len(msg.data))

    await hub.nc.subscribe("citycast.telemetry.s1", cb=count)
    await settle(hub.nc)
    site = await connect(auth_nats.url, path, site_inbox_prefix("s1"))
    for _ in range(100):
        await site.nc.publish("citycast.telemetry.s1", b"x" * 1000)
    await settle(site.nc, 3)
    await wait_until(lambda: sum(got) == 100_000, "all 100 kB at the hub", timeout=5, detail=lambda: sum(got))
    assert site.nc.is_connected and not site.errors
    await site.nc.close()
