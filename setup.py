"""The build step that makes the files the hub serves but git does not hold, so that a wheel carries them.

Everything else about the package is declared in pyproject.toml. `build_py` (run for a wheel, and for an editable
install) first runs scripts/build-assets.sh: Leaflet for the console's map from the npm registry, the telephone's
prompts spoken by espeak-ng; [tool.setuptools.package-data] then ships them. An sdist runs the same script first,
so it carries the made files too, and a wheel built from it (which has no scripts/ folder) uses those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
SCRIPT = ROOT / "scripts" / "build-assets.sh"
# What the hub cannot do without: the console page loads these (src/citycast/hub/console/static/index.html).
REQUIRED = [ROOT / "src/citycast/hub/console/static/vendor" / name for name in ("leaflet.js", "leaflet.css")]
# The folders the script makes. Package discovery ran before they existed (on a fresh checkout), and setuptools
# warns about a data folder that is not a listed package, so they are listed once made.
MADE_FOLDERS = [
    "hub.console.static.vendor",
    "hub.console.static.vendor.images",
    "hub.console.static.vendor.fonts",
    "hub.telephone.prompts_cache",
    "hub.telephone.prompts_cache.ur",
]


def build_assets() -> None:
    if SCRIPT.exists():
        # The prompt list is read with this interpreter: the build environment's, which has no numpy (by design).
        subprocess.run(["bash", str(SCRIPT)], check=True, env=os.environ | {"PYTHON": sys.executable})
    missing = [str(p.relative_to(ROOT)) for p in REQUIRED if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise SystemExit(f"citycast build: {', '.join(missing)} missing and no scripts/build-assets.sh to make them")


class BuildPyWithAssets(build_py):
    def run(self) -> None:
        # Before build_py lists its data files (it does so lazily, in run), so the made files are among them.
        build_assets()
        for folder in (f"citycast.{name}" for name in MADE_FOLDERS):
            if (ROOT / "src" / folder.replace(".", "/")).is_dir() and folder not in (self.packages or []):
                self.packages.append(folder)
        super().run()


class SdistWithAssets(sdist):
    def run(self) -> None:
        build_assets()
        super().run()


setup(cmdclass={"build_py": BuildPyWithAssets, "sdist": SdistWithAssets})
