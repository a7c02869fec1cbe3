#!/bin/sh
# Speak the telephone prompts with espeak-ng into WAV files (run by scripts/build-assets.sh, at set-up and when a
# wheel is built; nothing is fetched). The list of prompts (name and text) is citycast.hub.telephone.prompts's
# PROMPT_TEXTS, read by scripts/prompt_texts.py with the standard library alone (a wheel's isolated build
# environment has no numpy to import the module with), so code and files cannot drift apart.
# The Urdu set (names "ur/<name>") goes into <output-dir>/ur/, spoken with espeak-ng's ur voice.
# Idempotent: a prompt is spoken again only if its file is missing or its text changed (kept in <name>.txt).
# Usage: scripts/prompts.sh [output-dir]   (default: src/citycast/hub/telephone/prompts_cache)
#        PYTHON=/path/to/python to use another interpreter (default: python3)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out=${1:-"$root/src/citycast/hub/telephone/prompts_cache"}
voice=${CITYCAST_PROMPT_VOICE:-en-gb}

if ! command -v espeak-ng >/dev/null 2>&1; then
    echo "prompts.sh: espeak-ng is not installed (apt-get install espeak-ng); the telephone will play tones" >&2
    exit 1
fi
mkdir -p "$out"
list=$(mktemp)
trap 'rm -f "$list" "$out"/.tmp-*' EXIT
"$python" "$root/scripts/prompt_texts.py" >"$list"

made=0
kept=0
tab=$(printf '\t')
while IFS="$tab" read -r name text; do
    [ -n "$name" ] || continue
    if [ -s "$out/$name.wav" ] && [ -f "$out/$name.txt" ] && [ "$(cat "$out/$name.txt")" = "$text" ]; then
        kept=$((kept + 1))
        continue
    fi
    # Write beside, then rename: an interrupted run never leaves a half-written prompt under its real name.
    case $name in
        */*) speaker=${name%%/*}; mkdir -p "$out/$speaker" ;;  # a language's folder names its espeak-ng voice
        *) speaker=$voice ;;
    esac
    tmp="$out/.tmp-$(printf '%s' "$name" | tr / -).wav"
    espeak-ng -v "$speaker" -s 150 -a 150 -w "$tmp" "$text"
    mv "$tmp" "$out/$name.wav"
    printf '%s' "$text" >"$out/$name.txt"
    made=$((made + 1))
done <"$list"
echo "prompts.sh: $made spoken, $kept already there, in $out"
