#!/usr/bin/env bash
# The runtime image's contents, checked without a container engine: builds
# the root filesystem the Dockerfile's last stage produces — what
# gcr.io/distroless/cc-debian12 holds (Debian 12's glibc, libgcc, libstdc++,
# libgomp, OpenSSL 3, CA certificates, tzdata, a nonroot user), the zlib the
# builder stage copies to /usr/lib, and the binary stripped of debug info
# as the builder does — then runs it there under chroot as uid 65532:
# `rush serve` embedded must start, answer /healthz and /readyz, and stop on
# SIGTERM with only what the image holds.
#
#   scripts/image-check.sh [RUSH-BINARY]   (default target/debug/rush; root)
#
# The registry image itself cannot be pulled here (no gcr.io); the package
# list mirrors distroless' cc-debian12 and base-debian12 definitions.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/rush}
port=${IMAGE_CHECK_PORT:-18765}
[ -x "$bin" ] || { echo "no rush binary at $bin" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "image-check needs root (chroot)" >&2; exit 2; }

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root" "$work/debs"

# distroless base-debian12 + cc-debian12, as Debian packages.
packages=(libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 ca-certificates tzdata netbase)
(cd "$work/debs" && apt-get download -qq "${packages[@]}" >/dev/null 2>&1) || {
  apt-get update -qq && (cd "$work/debs" && apt-get download -qq "${packages[@]}")
}
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$root"; done
# ca-certificates ships the certificates; the bundle is generated at install.
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" 2>/dev/null || true
# Debian 12 is merged-/usr: the loader is reached through /lib64.
[ -e "$root/lib64" ] || ln -s usr/lib64 "$root/lib64"
[ -e "$root/lib" ] || ln -s usr/lib "$root/lib"
mkdir -p "$root/etc" "$root/home/nonroot" "$root/tmp" "$root/usr/local/bin"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
echo "nonroot:x:65532:" >"$root/etc/group"
chown 65532:65532 "$root/home/nonroot"
chmod 1777 "$root/tmp"

# The builder stage: the stripped binary, and libz.so.1 from the builder.
objcopy --strip-debug "$bin" "$root/usr/local/bin/rush"
cp "$(ldconfig -p | awk '/libz\.so\.1 / {print $NF; exit}')" "$root/usr/lib/"

# It starts as the image's user, with the image's environment (a library
# missing from the image fails here, with the loader's message).
chroot_bin=$(command -v chroot)
env -i RUSH__DATA_DIR=/home/nonroot/rush-data RUSH__HTTP__ADDR=127.0.0.1:$port RUST_LOG=warn \
  "$chroot_bin" --userspec=65532:65532 "$root" /usr/local/bin/rush serve >"$work/rush.log" 2>&1 &
pid=$!
ok=
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then
    ok=1
    break
  fi
  sleep 0.1
done
if [ -z "$ok" ]; then
  echo "image-check: rush did not become ready inside the image's filesystem" >&2
  cat "$work/rush.log" >&2
  exit 1
fi
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  echo "image-check: rush did not stop on SIGTERM" >&2
  exit 1
fi
wait "$pid" || { echo "image-check: rush exited with an error" >&2; cat "$work/rush.log" >&2; exit 1; }
pid=
echo "image-check: rush serves and stops inside the runtime image's filesystem ($(du -sh "$root" | cut -f1))"
