"""`citycast keygen`: the ingest signing key, private half readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from citycast.cli import app

runner = CliRunner()


def test_keygen_writes_a_private_key_only_root_can_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mode = stat.S_IMODE(os.stat(tmp_path / "ingest.key").st_mode)
    assert mode == 0o600
    assert (tmp_path / "trusted.keys").read_text().startswith("ed25519:")
