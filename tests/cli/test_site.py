"""`citycast site` as a user meets it: a missing trust file is a clear error, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_site_with_no_trusted_keys_is_a_clear_error(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "citycast", "site", "--trust", str(tmp_path / "missing.keys"),
                        "--sink", "timed"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2
    assert "missing.keys" in p.stderr
    assert "Traceback" not in p.stderr
