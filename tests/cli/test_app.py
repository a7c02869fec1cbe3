"""The command as a user meets it: every role's command listed with accurate help, the console script and
`python -m citycast` both reaching it, and `--help` importing none of what the commands run."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from typer.testing import CliRunner

from citycast.cli import app, main

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # each option's help on one line

COMMANDS = (
    "keygen",
    "serve",
    "city",
    "city-bundle",
    "ingest",
    "site",
    "simulate",
    "probe",
    "demo",
    "bench",
    "bench-hub",
    "bench-fuzz",
    "bench-sip",
)


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 1]
    for command in COMMANDS:
        assert command in listed, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], prog_name="citycast")
    assert result.exit_code == 0, result.output
    assert f"citycast {command} [OPTIONS]" in result.output


def test_the_city_server_has_its_own_command_and_serve_says_zone_is_deprecated() -> None:
    city = runner.invoke(app, ["city", "--help"], env=WIDE)
    for option in ("--zone", "--city-bundle", "--leaf-remote", "--time-upstream", "--listen", "--data-dir"):
        assert option in city.output
    serve = runner.invoke(app, ["serve", "--help"], env=WIDE)
    zone_line = next(line for line in serve.output.splitlines() if "--zone" in line)
    assert "Deprecated" in zone_line and "citycast city" in zone_line
    # The city server's own options are not offered on the hub's command any more.
    assert "--city-bundle" not in serve.output and "--time-upstream" not in serve.output


def test_the_console_script_is_the_cli_main() -> None:
    (script,) = entry_points(group="console_scripts", name="citycast")
    assert script.load() is main


def test_python_dash_m_runs_the_same_command() -> None:
    p = subprocess.run([sys.executable, "-m", "citycast", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "city-bundle" in p.stdout and "bench-sip" in p.stdout


# What the commands run: our packages beyond the CLI's own option types, and the heavy libraries under them.
HEAVY = (
    "citycast.hub", "citycast.site", "citycast.bus", "citycast.ingest", "citycast.media", "citycast.clock",
    "citycast.sip", "citycast.rtp", "citycast.tooling", "nats", "fastapi", "starlette", "sqlalchemy", "av",
    "numpy", "httpx", "uvicorn", "uvloop", "cryptography", "sounddevice",
)  # fmt: skip


def test_help_imports_nothing_the_commands_run() -> None:
    """What a command runs is imported inside it, so `citycast --help` stays fast."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from citycast.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "print(' '.join(sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    assert "citycast.cli.bench" in loaded  # the listing did import every role's module
    heavy = {m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)}
    assert not heavy, heavy
