"""What a site process maps: none of the hub's or the encoders' libraries (issue 11: RSS ≤ 60 MB)."""

from __future__ import annotations

import subprocess
import sys

# Each of these costs a site megabytes of resident memory and is never used by one: PyAV (all of FFmpeg, ≈ 25 MB;
# the site decodes through libopus itself), httpx (enrolment only), the hub's web and database stacks.
NOT_ON_A_SITE = ("av", "httpx", "fastapi", "starlette", "sqlalchemy", "aiortc", "uvicorn", "alembic")

PROBE = """
import sys
import citycast.cli.site, citycast.site.run, citycast.site.agent
from citycast.media.codec import OpusDecoder
OpusDecoder().decode(b"\\xf8\\xff\\xfe")
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_a_site_imports_no_hub_web_stack_and_no_ffmpeg() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(out.stdout.split())
    assert "citycast" in loaded and "numpy" in loaded  # the probe really imported the site
    assert loaded.isdisjoint(NOT_ON_A_SITE), sorted(loaded & set(NOT_ON_A_SITE))
