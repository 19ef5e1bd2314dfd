#!/usr/bin/env bash
# Prints the path of a Python interpreter with the official client SDKs of requirements.txt,
# creating the venv on first use. The venv lives outside the repo, keyed by the requirements'
# hash, so a second run (or a second test) is instant and a changed pin gets a fresh one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
key="$(sha256sum "$req" | cut -c1-16)"
root="${SSEKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ssekeeper}"
venv="$root/pyclients-$key"
if [[ ! -x "$venv/bin/python" || ! -f "$venv/.complete" ]]; then
  mkdir -p "$root"
  # One creator at a time (tests may ask in parallel).
  exec 9>"$root/pyclients.lock"
  flock 9
  if [[ ! -f "$venv/.complete" ]]; then
    rm -rf "$venv"
    echo "clients: creating $venv (pip install -r requirements.txt)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv/bin/python"
