#!/usr/bin/env bash
# Installs the console's front-end libraries from the npm registry and copies the files the console serves
# into its static folder (ignored by git, shipped in the wheel): Leaflet for the map, and Noto Naskh Arabic
# (@fontsource) for the console in Urdu. Run by scripts/build-assets.sh.
set -euo pipefail
cd "$(dirname "$0")/../src/citycast/hub/console"
if [ ! -d node_modules/leaflet ] || [ ! -d node_modules/@fontsource/noto-naskh-arabic ] || [ package-lock.json -nt node_modules ]; then
  if ! command -v npm >/dev/null; then
    echo "console-assets.sh: npm is not installed (Debian package npm): the console's map (Leaflet) cannot be made" >&2
    exit 1
  fi
  npm ci --silent --no-audit --no-fund >/dev/null
fi
mkdir -p static/vendor/images
cp node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css static/vendor/
cp node_modules/leaflet/dist/images/*.png static/vendor/images/
mkdir -p static/vendor/fonts
cp node_modules/@fontsource/noto-naskh-arabic/files/noto-naskh-arabic-arabic-{400,700}-normal.woff2 \
  node_modules/@fontsource/noto-naskh-arabic/LICENSE static/vendor/fonts/
