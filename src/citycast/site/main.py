"""`citycast site` once its options are parsed: the agent in a process without the command line's libraries.

Typer parses with pydantic and click, and the command line imports every command's module: ≈ 13 MB of a site's
resident memory (76 MB → 64 MB measured) that playout never touches, on a box that may have 512 MB in all. So once
`citycast site` knows its options it re-executes the interpreter on this module: the same process (pid, standard
streams, signals, a supervisor's view of it), a fresh address space. The options travel in an environment variable
as JSON; the credentials file is read again here, never passed on (an environment can be read by the same user).
Errors and log lines look as the command line prints them (rich, on standard error).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from citycast.site.options import SiteOptions

ENV = "CITYCAST_SITE_OPTIONS"


def encode(opts: SiteOptions, log_level: int = logging.WARNING) -> str:
    """The options as JSON: paths as text, the credentials as whether to read `credentials_path` again."""
    out: dict[str, Any] = {"log_level": log_level, "read_credentials": opts.credentials is not None}
    for f in dataclasses.fields(opts):
        if f.name == "credentials":
            continue
        value = getattr(opts, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return json.dumps(out)


def decode(text: str) -> tuple[SiteOptions, int]:
    """(options, log level) from `encode`'s JSON. Raises ValueError if it is not that (or the credentials file
    cannot be read any more)."""
    from citycast.site.enrol import CredentialsFileError, SiteCredentials

    try:
        raw = json.loads(text)
        log_level = int(raw.pop("log_level"))
        read_credentials = bool(raw.pop("read_credentials"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{ENV} is not a site's options: {e}") from None
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(SiteOptions):
        if f.name not in raw:
            continue
        value = raw[f.name]
        # Annotations are text here (postponed evaluation): every Path field says so in its own.
        kwargs[f.name] = Path(value) if value is not None and "Path" in str(f.type) else value
    try:
        opts = SiteOptions(**kwargs)
    except TypeError as e:
        raise ValueError(f"{ENV} is not a site's options: {e}") from None
    if read_credentials:
        if opts.credentials_path is None:
            raise ValueError(f"{ENV} asks for credentials but names no file")
        try:
            opts.credentials = SiteCredentials.load(opts.credentials_path)
        except CredentialsFileError as e:
            raise ValueError(str(e)) from None
    return opts, log_level


def exec_site(opts: SiteOptions) -> NoReturn:
    """Replace this process with `python -m citycast.site.main` running `opts`."""
    env = {**os.environ, ENV: encode(opts, logging.getLogger().getEffectiveLevel())}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "citycast.site.main"], env)


def main() -> int:
    from rich.console import Console
    from rich.logging import RichHandler

    from citycast import runtime
    from citycast.site.run import run_site

    console = Console(stderr=True)
    try:
        opts, level = decode(os.environ.pop(ENV, ""))
    except ValueError as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    try:
        runtime.run(run_site(opts))
    except (ValueError, RuntimeError) as e:
        console.print(f"[bold red]error:[/] {e}")
        return 1 if isinstance(e, RuntimeError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
