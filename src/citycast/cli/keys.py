"""Keys made at the command line: the ingest signing key whose public half the sites trust."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citycast.cli.common import console

app = typer.Typer()


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Folder for ingest.key (private, 0600) and trusted.keys (public).")] = Path(
        "keys"
    ),
) -> None:
    """Make an ingest signing key. Sites trust the public half (trusted.keys); only ingest holds the private one."""
    from citycast.media.keys import generate_private_key, public_key_text, save_private_key

    out.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    save_private_key(key, out / "ingest.key")
    (out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    console.print(f"wrote {out / 'ingest.key'} (keep it secret) and {out / 'trusted.keys'} (give it to sites)")
