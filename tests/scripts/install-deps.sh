#!/usr/bin/env bash
# Installs the Debian packages the tests need (real Redis, a real HAProxy, openssl for the
# cluster's certificates, curl, iproute2 ...) when they are missing. A fast no-op when everything
# is present, so `make test` and CI can call it every time. Starts no service: the tests start
# their own Redis, so a packaged redis-server left running on 6379 is stopped and disabled.
#
# The packaged containerd may start a daemon of its own (where init systems allow it); the node
# runs its own with its own config and socket, so the packaged one is stopped like Redis below.
# The prometheus package is installed for its promtool only; its daemon (on 9090) is stopped too.
#
# Go is not installed here: Debian's is too old for Kubernetes 1.34 (needs >= 1.24); the
# machine's toolchain is used by tests/cluster/build.sh and is checked there.
set -euo pipefail

# package -> a command it provides (checked too, so a half-configured package counts as missing)
declare -A PKGS=(
  [redis-server]=redis-server
  [redis-tools]=redis-cli
  [haproxy]=haproxy
  [nginx]=nginx
  [openssl]=openssl
  [curl]=curl
  [ca-certificates]=update-ca-certificates
  [iproute2]=ss
  [util-linux]=flock
  [procps]=ps
  [coreutils]=timeout
  [sed]=sed
  [grep]=grep
  # The node: container runtime, CNI plugins, kube-proxy's and the kubelet's tools.
  [containerd]=containerd
  [runc]=runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=iptables
  [conntrack]=conntrack
  [ethtool]=ethtool
  [kmod]=modprobe
  # Images: buildah writes them (no daemon); gcc + libc6-dev build the static pause; objcopy strips.
  [buildah]=buildah
  [gcc]=gcc
  [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
  [binutils]=objcopy
  # The monitoring pack: promtool checks and unit-tests the chart's alert rules (tests/monitoring).
  [prometheus]=promtool
)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]] &&
    { [[ "${PKGS[$1]}" == /* ]] && [[ -e "${PKGS[$1]}" ]] || PATH="$PATH:/usr/sbin:/sbin" command -v "${PKGS[$1]}" >/dev/null; }
}

SUDO=""
if ((EUID != 0)); then SUDO=sudo; fi

missing=()
for p in "${!PKGS[@]}"; do installed "$p" || missing+=("$p"); done

if ((${#missing[@]})); then
  [[ -z "$SUDO" ]] || command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
  # Wait for another apt/dpkg (other checkouts install too) instead of failing on the lock.
  apt_opts=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  export DEBIAN_FRONTEND=noninteractive
  log "installing: ${missing[*]}"
  # A package list that never was fetched (or went stale) makes install fail: update once, retry.
  if ! $SUDO apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}" >/tmp/install-deps.$$.log 2>&1; then
    log "install failed; running apt-get update once and retrying"
    $SUDO apt-get update -q -o DPkg::Lock::Timeout=600 >>/tmp/install-deps.$$.log 2>&1 ||
      { tail -n 20 /tmp/install-deps.$$.log >&2; die "apt-get update failed (log: /tmp/install-deps.$$.log)"; }
    $SUDO apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}" >>/tmp/install-deps.$$.log 2>&1 ||
      { tail -n 20 /tmp/install-deps.$$.log >&2; die "apt-get install failed (log: /tmp/install-deps.$$.log)"; }
  fi
  rm -f /tmp/install-deps.$$.log
  for p in "${missing[@]}"; do installed "$p" || die "$p still missing after apt-get install"; done
fi

# The redis-server package may start a system Redis on 6379 (where init systems allow it).
# Tests start their own on ports they choose; a stray one would answer instead, so stop it and
# keep it from starting at boot. Only the packaged daemon is touched (its pidfile / unit).
stop_system_redis() {
  local pidfile=/run/redis/redis-server.pid pid
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/redis-server ]]; then
    $SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true
  fi
  if [[ -s "$pidfile" ]]; then
    pid="$(<"$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      log "stopping the system redis-server (pid $pid) so it does not answer tests on 6379"
      if [[ -x /etc/init.d/redis-server ]]; then $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true; fi
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then $SUDO kill "$pid" 2>/dev/null || true; fi
    fi
  fi
}
stop_system_redis
# nginx (a peer in `make bench`, started there with its own config) must not keep a packaged
# server on port 80.
stop_system_nginx() {
  local pidfile=/run/nginx.pid pid
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/nginx ]]; then
    $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
  fi
  if [[ -s "$pidfile" ]]; then
    pid="$(<"$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      log "stopping the system nginx (pid $pid)"
      if [[ -x /etc/init.d/nginx ]]; then $SUDO /etc/init.d/nginx stop >/dev/null 2>&1 || true; fi
    fi
  fi
}
stop_system_nginx
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  $SUDO systemctl disable --now containerd.service >/dev/null 2>&1 || true
fi
# The prometheus package brings promtool (tests/monitoring/check.sh) and a Prometheus server that
# its postinst may start on 9090, scraping this machine: nothing here wants it, so stop it and keep
# it from starting at boot (its pidfile or unit only, like Redis above).
stop_system_prometheus() {
  local pidfile=/run/prometheus/prometheus.pid pid
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  if [[ -s "$pidfile" ]]; then
    pid="$(<"$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      log "stopping the system prometheus (pid $pid)"
      if [[ -x /etc/init.d/prometheus ]]; then $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then $SUDO kill "$pid" 2>/dev/null || true; fi
    fi
  fi
}
stop_system_prometheus
