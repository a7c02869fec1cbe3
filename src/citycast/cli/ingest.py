"""The source side (`citycast ingest`): a file, URL, line-in, tone or markers sent live as signed frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citycast import runtime
from citycast.cli.common import DEFAULT_NATS, ChannelOpt, NatsOpt, PrefixOpt, console, fail

app = typer.Typer()


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(help="A file or URL (anything FFmpeg decodes), 'marker[:PERIOD]', 'line-in' or 'tone:HZ'."),
    ],
    key: Annotated[Path, typer.Option(help="Ingest signing key (from `citycast keygen`).")] = Path("keys/ingest.key"),
    nats: NatsOpt = DEFAULT_NATS,
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    packets_per_message: Annotated[
        int, typer.Option(min=1, max=4, help="Opus packets (20 ms each) per bus message.")
    ] = 1,
    bitrate: Annotated[int, typer.Option(help="Opus bitrate, bit/s.")] = 64_000,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds of audio.")] = None,
    loop: Annotated[bool, typer.Option(help="Loop a file source.")] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write the stream's facts (stream id, start time…) as JSON.")
    ] = None,
    creds: Annotated[
        Path | None,
        typer.Option(help="NATS credentials of the ingest user (a hub's DATA_DIR/nats-auth/ingest.creds)."),
    ] = None,
) -> None:
    """Send a source live on a channel: Opus 20 ms frames, stamped with the broadcast clock, signed.

    Against a hub (`citycast serve`), use its key and the ingest user: --key DATA_DIR/ingest.key
    --creds DATA_DIR/nats-auth/ingest.creds."""
    from citycast.ingest.run import IngestOptions, run_ingest
    from citycast.media.keys import KeyFileError, load_private_key
    from citycast.media.sources import SourceError, open_source

    try:
        private = load_private_key(key)
    except KeyFileError as e:
        fail(str(e))
    try:
        src = open_source(source, loop=loop)
    except SourceError as e:
        fail(str(e))
    opts = IngestOptions(
        nats_url=nats,
        channel=channel,
        prefix=prefix,
        packets_per_message=packets_per_message,
        bitrate=bitrate,
        seconds=seconds,
        report_path=report,
        creds=creds,
    )
    result = runtime.run(run_ingest(src, private, opts))
    if result is not None:
        console.print(f"sent {result.packets} packets in {result.messages} messages on channel {channel}")
