#!/usr/bin/env bash
# Sets up a fresh machine for citycast: Debian packages the code and tests need, a venv, the package itself.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(libportaudio2 libopus0 pulseaudio pulseaudio-utils libasound2-plugins iproute2 nftables chromium postgresql sip-tester baresip espeak-ng icecast2 snapserver snapclient dbus pipewire pipewire-pulse wireplumber)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: please install these Debian packages (as root): ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PipeWire's ALSA plugin, for the tests and the sound bench's `--sink alsa --sound-server pipewire` (the sites of
# a PipeWire box play through it). Debian's pipewire-alsa conflicts with pulseaudio, which the tests also need, so
# its files are unpacked into /opt/citycast/pipewire-alsa instead of installed (citycast.tooling.bench.alsa_plugins).
pw_alsa=/opt/citycast/pipewire-alsa
if ! dpkg-query -W -f='${Status}' pipewire-alsa 2>/dev/null | grep -q "install ok installed" \
    && [ ! -e "$pw_alsa/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)/alsa-lib/libasound_module_pcm_pipewire.so" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: unpacking pipewire-alsa into $pw_alsa"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt's download runs as _apt
    # apt's lists may be older than its mirror (or absent on a fresh image): refresh them once if the download fails.
    (cd "$tmp" && { apt-get download -qq pipewire-alsa >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get download -qq pipewire-alsa >/dev/null; }; } \
      && mkdir -p "$pw_alsa" && dpkg-deb -x pipewire-alsa_*.deb "$pw_alsa") \
      || echo "setup: could not unpack pipewire-alsa: the PipeWire ALSA tests will fail" >&2
    rm -rf "$tmp"
  else
    echo "setup: as root, unpack Debian's pipewire-alsa into $pw_alsa for the PipeWire tests" >&2
  fi
fi

if ! command -v npm >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "setup: please install npm (Debian package npm)" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
# The console's front-end libraries (from the npm registry, never pasted into the repository) and the telephone's
# prompts (spoken by espeak-ng, not fetched). The editable install above made them already (setup.py's build step
# runs the same script); run again here, where its messages are seen, it does nothing when they are up to date.
PYTHON=.venv/bin/python scripts/build-assets.sh
.venv/bin/python -c "import citycast, av, nats" # fail here, loudly, if the install did not work
