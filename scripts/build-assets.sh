#!/usr/bin/env bash
# Makes the files the hub serves and that git does not hold: the console's map library (Leaflet, from the npm
# registry) and the telephone's spoken prompts (espeak-ng). The one way to make them: scripts/setup.sh runs this
# for a developer's checkout, and setup.py's build step runs it whenever a wheel is built, so a wheel carries them
# as package data.
#
# Without npm the build fails: a console without its map is broken. Without espeak-ng it warns, loudly, and goes
# on: the telephone then plays tone patterns where the prompts would be (as on any machine without them); set
# CITYCAST_REQUIRE_PROMPTS=1 to fail instead (CI does, through tests/test_wheel.py).
# PYTHON=/path/to/python runs the prompt list reader with that interpreter (default: python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

"$here/console-assets.sh"

if command -v espeak-ng >/dev/null 2>&1; then
  "$here/prompts.sh"
elif [ "${CITYCAST_REQUIRE_PROMPTS:-0}" = 1 ]; then
  echo "build-assets.sh: espeak-ng is not installed and CITYCAST_REQUIRE_PROMPTS=1: no prompts, no build" >&2
  exit 1
else
  {
    echo "########################################################################################################"
    echo "build-assets.sh: WARNING: espeak-ng is not installed (apt-get install espeak-ng), so the telephone's"
    echo "spoken prompts are not made: this build's telephone plays tones instead of words."
    echo "########################################################################################################"
  } >&2
fi
