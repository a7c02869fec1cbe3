"""`citycast.runtime.run`: a stop signal at any moment ends the process cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# SIGTERM lands while `run` imports uvloop, before any event loop exists: the moment systemd stopping a unit it
# has only just started can hit (CI saw a site killed there with status -15).
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, os, signal, sys

    class SignalOnUvloop(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "uvloop":
                os.kill(os.getpid(), signal.SIGTERM)
            return None

    sys.meta_path.insert(0, SignalOnUvloop())
    from citycast import runtime

    started = []

    async def main():
        started.append(True)
        return "ran"

    result = runtime.run(main())
    print("returned", result, "started", bool(started), flush=True)
    """
)


def test_a_sigterm_before_the_loop_runs_stops_cleanly_without_starting_main() -> None:
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "returned None started False" in p.stdout
    assert "RuntimeWarning" not in p.stderr  # the unstarted coroutine was closed, not dropped


def test_a_run_without_a_signal_returns_mains_result_and_restores_the_handlers() -> None:
    script = textwrap.dedent(
        """
        import signal
        from citycast import runtime

        async def main():
            return 7

        before = signal.getsignal(signal.SIGTERM)
        print(runtime.run(main()), signal.getsignal(signal.SIGTERM) is before, flush=True)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["7", "True"]
