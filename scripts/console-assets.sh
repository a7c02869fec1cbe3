#!/usr/bin/env bash
# Installs the console's front-end libraries from the npm registry and copies the files the console serves
# into its static folder (ignored by git). Run by setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../src/citycast/hub/console"
[ -f package.json ] || exit 0
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --silent --no-audit --no-fund >/dev/null
fi
mkdir -p static/vendor
cp node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css static/vendor/
mkdir -p static/vendor/images
cp node_modules/leaflet/dist/images/*.png static/vendor/images/
