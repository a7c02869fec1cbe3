"""Installed as a Python package: a wheel built from the working tree (by pip, in its isolated build environment,
from a copy holding only what git would, so no asset made earlier in the checkout can stand in), installed in a
fresh venv without pip, the repository, a set-up script or dev extras, runs a hub whose console page loads its map
script and whose telephone speaks its prompts.

Dependencies are installed from a wheelhouse kept in build/wheelhouse (git-ignored) with `--no-index`; it is filled
from the package registry the first time, or when a dependency it lacks is added (about a minute more). The asset
scripts alone are also run without npm or espeak-ng on PATH: the build must fail, or warn, as documented.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.helpers import wait_until_sync

from citycast.bus.server import free_port
from citycast.hub.telephone.prompts import PROMPT_SETS, PROMPT_TEXTS

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(os.environ.get("CITYCAST_WHEELHOUSE", ROOT / "build" / "wheelhouse"))
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _run(
    cmd: list[str], what: str, timeout: float, cwd: Path | str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False, cwd=cwd, env=env
    )
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _copy_of_the_tree(dest: Path) -> None:
    """What a fresh clone of the working tree holds: tracked and new files, nothing git ignores (no node_modules,
    no vendor folder, no prompts made before)."""
    listed = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], "git ls-files", 60, cwd=ROOT
    ).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a file deleted in the working tree but not yet in git's index is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _install(wheel: Path, env_dir: Path) -> Path:
    """A fresh venv (no pip, no system site-packages) with `wheel` and its dependencies installed; its python."""
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = [*PIP, "--python", str(python), "install", "-q", "--no-compile", "--no-index", "--find-links"]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    with open(WHEELHOUSE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run filling the wheelhouse: wait for it
        first = subprocess.run(
            [*install, str(WHEELHOUSE), str(wheel)], capture_output=True, text=True, timeout=300, check=False
        )
        if first.returncode != 0:  # a dependency the wheelhouse lacks (or the first run): fill it from the registry
            _run([*PIP, "wheel", "-q", "-w", str(WHEELHOUSE), str(wheel)], "filling the wheelhouse", 900)
            for own in WHEELHOUSE.glob("citycast-*.whl"):
                own.unlink()
            _run([*install, str(WHEELHOUSE), str(wheel)], "installing the wheel", 300)
    return python


@dataclass
class InstalledHub:
    wheel: Path
    python: Path
    url: str


@pytest.fixture(scope="module")
def installed_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledHub]:
    work = tmp_path_factory.mktemp("wheel")
    tree, dist = work / "tree", work / "dist"
    _copy_of_the_tree(tree)
    # Prompts are part of what this checks: a build without espeak-ng fails instead of warning.
    build_env = os.environ | {"CITYCAST_REQUIRE_PROMPTS": "1"}
    _run([*PIP, "wheel", "-q", "--no-deps", "-w", str(dist), str(tree)], "building the wheel", 600, env=build_env)
    (wheel,) = dist.glob("citycast-*.whl")
    python = _install(wheel, work / "venv")

    http = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    log = work / "hub.log"
    with open(log, "wb") as out:
        hub = subprocess.Popen(
            [str(python.parent / "citycast"), "serve", "--data-dir", str(work / "data"),
             "--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{http}", "--https", "off"],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{http}"

    def up() -> bool:
        assert hub.poll() is None, f"the hub exited ({hub.returncode}): {log.read_text(errors='replace')[-3000:]}"
        try:
            return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until_sync(up, "the installed hub's /api/health", timeout=90, every=0.25,
                        detail=lambda: log.read_text(errors="replace")[-2000:])  # fmt: skip
        yield InstalledHub(wheel, python, url)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()


def test_prompt_list_read_without_imports_is_the_modules() -> None:
    """The build reads the prompt list with the standard library (its isolated environment has no numpy): the
    list must be exactly the one the code asks for."""
    plain = _run([sys.executable, str(ROOT / "scripts" / "prompt_texts.py")], "prompt_texts.py", 60).stdout
    module = _run([sys.executable, "-m", "citycast.hub.telephone.prompts", "--list"], "--list", 60).stdout
    assert plain == module
    assert [line.split("\t")[0] for line in plain.splitlines()] == [
        f"{folder}{name}" for texts, folder in PROMPT_SETS.values() for name in texts
    ]
    assert list(PROMPT_TEXTS) == [line.split("\t")[0] for line in plain.splitlines() if "/" not in line.split("\t")[0]]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_wheel_carries_the_map_and_the_prompts(installed_hub: InstalledHub) -> None:
    names = set(zipfile.ZipFile(installed_hub.wheel).namelist())
    for vendor in (
        "leaflet.js",
        "leaflet.css",
        "images/marker-icon.png",
        "fonts/noto-naskh-arabic-arabic-400-normal.woff2",
    ):
        assert f"citycast/hub/console/static/vendor/{vendor}" in names
    assert {"citycast/hub/console/static/i18n/en.json", "citycast/hub/console/static/i18n/ur.json"} <= names
    for texts, folder in PROMPT_SETS.values():
        assert {f"citycast/hub/telephone/prompts_cache/{folder}{name}.wav" for name in texts} <= names
    assert not [n for n in names if n.startswith("citycast/") and ("node_modules" in n or n.endswith(".txt"))]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_installed_console_loads_its_map_script(installed_hub: InstalledHub) -> None:
    page = httpx.get(f"{installed_hub.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]*leaflet[^"]*\.js)"', page.text)
    assert scripts, "the console page references no Leaflet script"
    for src in scripts:
        script = httpx.get(f"{installed_hub.url}/{src.lstrip('/')}", timeout=10)
        assert script.status_code == 200, f"{src}: {script.status_code}"
        assert script.headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
        assert len(script.content) > 10_000 and b"Leaflet" in script.content[:500]
    for href in re.findall(r'<link[^>]*\bhref="([^"]*leaflet[^"]*\.css)"', page.text):
        css = httpx.get(f"{installed_hub.url}/{href.lstrip('/')}", timeout=10)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and css.content


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_installed_telephone_speaks_its_prompts(installed_hub: InstalledHub) -> None:
    probe = (
        "import json; from citycast.hub.telephone.prompts import DEFAULT_DIR, PROMPT_TEXTS, Prompts\n"
        "p = Prompts()\n"
        "seconds = {n: p.get(n).size / 48000 for n in PROMPT_TEXTS}\n"
        "print(json.dumps({'dir': str(DEFAULT_DIR), 'missing': sorted(p.missing), 'welcome': seconds['welcome']}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = json.loads(_run([str(installed_hub.python), "-c", probe], "the prompt probe", 120, cwd="/", env=env).stdout)
    # The installed package's own files, not the checkout's.
    assert Path(found["dir"]).is_relative_to(installed_hub.python.parent.parent)
    assert found["missing"] == []  # none fell back to a tone
    assert 2.0 < found["welcome"] < 8.0  # speech, some seconds of it (the welcome tone lasts a third of a second)


def _asset_tree(dest: Path, with_leaflet: bool) -> dict[str, str]:
    """The asset scripts and the console's npm files in `dest`, and an environment whose PATH has a shell and
    the few tools the scripts use, but neither npm nor espeak-ng."""
    for script in ("build-assets.sh", "console-assets.sh", "prompts.sh", "prompt_texts.py"):
        (dest / "scripts").mkdir(exist_ok=True)
        shutil.copy2(ROOT / "scripts" / script, dest / "scripts" / script)
    console = dest / "src/citycast/hub/console"
    console.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(ROOT / "src/citycast/hub/console" / name, console / name)
    if with_leaflet:  # as npm left it (Leaflet and the Urdu font), newer than the lock file
        modules = ROOT / "src/citycast/hub/console/node_modules"
        shutil.copytree(modules / "leaflet/dist", console / "node_modules/leaflet/dist")
        font = "@fontsource/noto-naskh-arabic"
        shutil.copytree(modules / font / "files", console / "node_modules" / font / "files")
        shutil.copy2(modules / font / "LICENSE", console / "node_modules" / font / "LICENSE")
        (console / "node_modules").touch()
    tools = dest / "bin"
    tools.mkdir()
    for tool in ("bash", "sh", "dirname", "mkdir", "cp", "cat", "rm", "mktemp"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    return {"PATH": str(tools), "HOME": str(dest)}


def test_assets_without_espeak_warn_or_fail_as_asked(tmp_path: Path) -> None:
    env = _asset_tree(tmp_path, with_leaflet=True)
    script = str(tmp_path / "scripts" / "build-assets.sh")
    warned = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert warned.returncode == 0, warned.stderr
    assert "WARNING: espeak-ng is not installed" in warned.stderr
    assert (tmp_path / "src/citycast/hub/console/static/vendor/leaflet.js").stat().st_size > 10_000
    strict = subprocess.run(
        [script], env=env | {"CITYCAST_REQUIRE_PROMPTS": "1"}, capture_output=True, text=True, timeout=60, check=False
    )
    assert strict.returncode == 1
    assert "espeak-ng is not installed and CITYCAST_REQUIRE_PROMPTS=1" in strict.stderr


def test_assets_without_npm_fail(tmp_path: Path) -> None:
    env = _asset_tree(tmp_path, with_leaflet=False)
    done = subprocess.run(
        [str(tmp_path / "scripts" / "build-assets.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "npm is not installed" in done.stderr
    assert not (tmp_path / "src/citycast/hub/console/static/vendor/leaflet.js").exists()
