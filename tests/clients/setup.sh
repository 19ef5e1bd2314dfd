#!/usr/bin/env bash
# Installs the official client SDKs the real-client tests drive, outside the repo, and prints on
# stdout the one line a test needs (everything else goes to stderr):
#
#   setup.sh          the path of a Python interpreter with the SDKs of requirements.txt, in a venv
#   setup.sh python   keyed by the requirements' hash
#   setup.sh node     the path of mcp_calls.mjs, copied beside a node_modules installed by `npm ci`
#                     from package-lock.json, keyed by the lock's hash; run it with `node PATH ...`
#                     (ESM resolves packages from the script's own directory upwards, so the
#                     script runs from there rather than from the repo)
#
# A second run (or a second test) is instant and a changed pin gets a fresh install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${SSEKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ssekeeper}"
mode="${1:-python}"

case "$mode" in
python)
  req="$here/requirements.txt"
  key="$(sha256sum "$req" | cut -c1-16)"
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
  ;;
node)
  lock="$here/package-lock.json"
  key="$(sha256sum "$lock" | cut -c1-16)"
  dir="$root/nodeclients-$key"
  if [[ ! -f "$dir/.complete" ]]; then
    command -v npm >/dev/null || { echo "clients: npm not found (Node.js is needed)" >&2; exit 1; }
    mkdir -p "$root"
    exec 9>"$root/nodeclients.lock"
    flock 9
    if [[ ! -f "$dir/.complete" ]]; then
      rm -rf "$dir"
      mkdir -p "$dir"
      echo "clients: creating $dir (npm ci from package-lock.json)" >&2
      cp "$here/package.json" "$lock" "$dir/"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=warn) >&2
      touch "$dir/.complete"
    fi
    exec 9>&-
  fi
  # The script is not part of the key: copy the repo's current one on every run, atomically
  # (a test already running the old copy keeps it).
  tmp="$(mktemp "$dir/.mcp_calls.mjs.XXXXXX")"
  cp "$here/mcp_calls.mjs" "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$dir/mcp_calls.mjs"
  echo "$dir/mcp_calls.mjs"
  ;;
*)
  echo "usage: setup.sh [python|node]" >&2
  exit 2
  ;;
esac
