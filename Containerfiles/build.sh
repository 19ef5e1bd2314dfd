#!/usr/bin/env bash
# `make images`: builds every image from its Containerfile with buildah, with no Docker daemon and
# nothing pulled. For each image it stages a build context (target/images/<name>/rootfs): the
# binary (our release builds, Debian's redis-server, CoreDNS built from its Go module, our static
# pause) plus exactly the shared libraries `ldd` says it loads, taken from this machine's Debian
# packages with their copyright files. `buildah bud` of a FROM-scratch Containerfile that only
# COPYs needs neither network nor runc. Each image is written as a docker-archive
# (target/images/<name>.tar) that `ctr images import` and `docker load` read, and the table of
# sizes is printed.
#
# Usage: Containerfiles/build.sh [NAME...]   (default: every image)
# Env: SSEKEEPER_IMAGE_REGISTRY (localhost/ssekeeper), SSEKEEPER_IMAGE_TAG (the workspace version),
#      SSEKEEPER_IMAGES_DIR (target/images), SSEKEEPER_CACHE (buildah's storage lives there), CARGO.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
registry="${SSEKEEPER_IMAGE_REGISTRY:-localhost/ssekeeper}"
tag="${SSEKEEPER_IMAGE_TAG:-$version}"
out="${SSEKEEPER_IMAGES_DIR:-$repo/target/images}"
cache="${SSEKEEPER_CACHE:-$HOME/.cache/ssekeeper}"
cargo="${CARGO:-cargo}"
all=(sidecar operator demo-app pause redis coredns)
if (($#)); then images=("$@"); else images=("${all[@]}"); fi

log() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null || die "buildah missing: run tests/scripts/install-deps.sh"
buildah=(buildah --root "$cache/buildah/storage" --runroot "/run/ssekeeper-buildah-$(id -u)" --storage-driver vfs)
mkdir -p "$out"

# Our Rust binaries, built once in release for every image that needs one.
need_rust=false
for n in "${images[@]}"; do case "$n" in sidecar | operator | demo-app) need_rust=true ;; esac; done
if $need_rust; then
  log "cargo build --release (sidecar, operator, demo-app)"
  "$cargo" build --release --locked -q -p ssekeeper-sidecar -p ssekeeper-operator -p ssekeeper-tests \
    --bin ssekeeper-sidecar --bin ssekeeper-operator --bin demo-app
fi

# copy_with_libs SRC DEST ROOTFS: SRC as DEST in ROOTFS, stripped of debug info, plus the shared
# libraries it loads (at the paths the loader looks for them) and their packages' copyright files.
copy_with_libs() {
  local src="$1" dest="$2" root="$3" lib pkg
  install -D -m 0755 "$src" "$root$dest"
  objcopy --strip-debug "$root$dest" 2>/dev/null || true
  ldd "$src" >/dev/null 2>&1 || return 0 # static: nothing to add
  while read -r lib; do
    [[ -n "$lib" && -e "$lib" ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    pkg="$(dpkg -S "$lib" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null || true)"
    pkg="${pkg%%:*}"
    if [[ -n "$pkg" && -f "/usr/share/doc/$pkg/copyright" ]]; then
      install -D -m 0644 "/usr/share/doc/$pkg/copyright" "$root/usr/share/doc/$pkg/copyright"
    fi
  done < <(ldd "$src" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}')
}

# base_files ROOTFS: the files a Rust binary of ours looks for (users for tools, name service
# order, CA roots for TLS to Redis or the API server).
base_files() {
  local root="$1"
  mkdir -p "$root/etc/ssl/certs"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  install -D -m 0644 /usr/share/doc/ca-certificates/copyright "$root/usr/share/doc/ca-certificates/copyright"
  install -D -m 0644 "$repo/LICENSE" "$root/usr/share/doc/ssekeeper/LICENSE" 2>/dev/null || true
}

stage() {
  local name="$1" root="$out/$1/rootfs"
  rm -rf "$out/$name"
  mkdir -p "$root"
  case "$name" in
    sidecar) base_files "$root"; copy_with_libs "$repo/target/release/ssekeeper-sidecar" /usr/local/bin/ssekeeper-sidecar "$root" ;;
    operator) base_files "$root"; copy_with_libs "$repo/target/release/ssekeeper-operator" /usr/local/bin/ssekeeper-operator "$root" ;;
    demo-app) base_files "$root"; copy_with_libs "$repo/target/release/demo-app" /usr/local/bin/demo-app "$root" ;;
    pause)
      command -v gcc >/dev/null || die "gcc missing (it builds the static pause binary)"
      gcc -static -Os -Wall -Wextra -Werror -o "$out/pause/pause.bin" "$here/pause.c" || die "building pause failed"
      install -D -m 0755 "$out/pause/pause.bin" "$root/pause"
      strip "$root/pause"
      ;;
    redis)
      # Debian's redis-server is redis-check-rdb under another name: it picks its mode by argv[0].
      copy_with_libs "$(readlink -f "$(command -v redis-server)")" /usr/bin/redis-server "$root"
      install -D -m 0644 /usr/share/doc/redis-server/copyright "$root/usr/share/doc/redis-server/copyright"
      mkdir -p "$root/etc" "$root/data"
      printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$root/etc/passwd"
      ;;
    coredns)
      local bin
      bin="$(bash "$repo/tests/cluster/build.sh")/coredns"
      [[ -x "$bin" ]] || die "CoreDNS was not built ($bin)"
      copy_with_libs "$(readlink -f "$bin")" /usr/local/bin/coredns "$root"
      ;;
    *) die "unknown image $name (known: ${all[*]})" ;;
  esac
}

build() {
  local name="$1" ref="$registry/$1:$tag" archive="$out/$1.tar"
  "${buildah[@]}" bud --quiet --layers=false --timestamp 0 --build-arg "VERSION=$tag" \
    -f "$here/$name.Containerfile" -t "$ref" "$out/$name" >/dev/null ||
    die "buildah bud failed for $name"
  rm -f "$archive"
  "${buildah[@]}" push --quiet "$ref" "docker-archive:$archive:$ref" >/dev/null ||
    die "buildah push to $archive failed"
  "${buildah[@]}" rmi "$ref" >/dev/null 2>&1 || true
}

printf '| image | reference | size (uncompressed) | archive |\n|---|---|---|---|\n'
for n in "${images[@]}"; do
  stage "$n"
  build "$n"
  size="$(du -sb "$out/$n/rootfs" | cut -f1)"
  arch="$(stat -c %s "$out/$n.tar")"
  printf '| %s | %s | %s | %s |\n' "$n" "$registry/$n:$tag" \
    "$(numfmt --to=iec-i --suffix=B "$size")" "$(numfmt --to=iec-i --suffix=B "$arch")"
done
