"""The `citycast` command: one module per role, each adding its commands to this root app.

Modules import only Typer at the top; what a command runs is imported inside it, so `citycast --help` stays fast."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.logging import RichHandler

from citycast.cli import bench, city, demo, hub, ingest, keys, sim, site
from citycast.cli.common import console, unwind_on_terminate

app = typer.Typer(
    help="citycast: one live voice on every loudspeaker of a city, in sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More log output.")] = 0,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


# Unnamed sub-apps merge their commands into this one (`citycast site`, not `citycast site site`); the help
# lists them in this order.
for role in (keys, hub, city, ingest, site, sim, demo, bench):
    app.add_typer(role.app)


def main() -> None:
    unwind_on_terminate()
    app()


if __name__ == "__main__":
    main()
