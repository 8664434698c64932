#!/usr/bin/env bash
# Builds the Debian package target/debian/ratelimiter_<version>_<arch>.deb from this tree:
#   /usr/bin/ratelimiter                        the release binary
#   /etc/ratelimiter/ratelimiter.toml           the config (a conffile)
#   /etc/default/ratelimiter                    the service's environment, for secrets (a conffile, 0600)
#   /etc/logrotate.d/ratelimiter                rotates the access log, then USR1 (a conffile)
#   /usr/lib/systemd/system/ratelimiter.service the hardened unit
#   /usr/share/doc/ratelimiter/                 README, copyright, changelog
# with maintainer scripts that enable and start the unit where systemd runs.
#
# Usage: scripts/package.sh             builds the release binary first
#        BINARY=path scripts/package.sh packages that binary instead (the tests use the debug one)
#        OUT=dir scripts/package.sh     writes the package there (default target/debian)
# Needs dpkg-deb and dpkg-shlibdeps (dpkg-dev, installed when missing), no cargo-deb: the
# package is plain files, and writing them here keeps every byte of it in view.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022 # dpkg-deb refuses a DEBIAN directory others cannot read

if ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
fi

if [ -z "${BINARY:-}" ]; then
  scripts/deps.sh build
  cargo build --release --locked
  BINARY=target/release/ratelimiter
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=${OUT:-target/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(mktemp -d "$out/root.XXXXXX")
shlib=$(mktemp -d)
trap 'rm -rf "$root" "$shlib"' EXIT
chmod 0755 "$root"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/ratelimiter" "$root/etc/default" \
  "$root/etc/logrotate.d" "$root/usr/lib/systemd/system" "$root/usr/share/doc/ratelimiter"

install -m 0755 "$BINARY" "$root/usr/bin/ratelimiter"
# Debian ships binaries without debug sections (the release profile keeps line tables).
strip --strip-debug "$root/usr/bin/ratelimiter"
install -m 0644 deploy/debian/ratelimiter.toml "$root/etc/ratelimiter/ratelimiter.toml"
install -m 0600 deploy/debian/default "$root/etc/default/ratelimiter"
install -m 0644 deploy/debian/logrotate "$root/etc/logrotate.d/ratelimiter"
install -m 0644 deploy/debian/ratelimiter.service "$root/usr/lib/systemd/system/ratelimiter.service"
for script in postinst prerm postrm; do
  install -m 0755 "deploy/debian/$script" "$root/DEBIAN/$script"
done

doc=$root/usr/share/doc/ratelimiter
gzip -9n <README.md >"$doc/README.md.gz"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ratelimiter

Files: *
Copyright: the ratelimiter authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
# Every time in the package is the commit's, so a rebuild of one commit gives the same files
# (dpkg-deb clamps file times to SOURCE_DATE_EPOCH).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
date=$(date -R -d "@$SOURCE_DATE_EPOCH")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
gzip -9n >"$doc/changelog.Debian.gz" <<EOF
ratelimiter ($version) unstable; urgency=medium

  * Built from commit $commit.

 -- ratelimiter maintainers <ratelimiter@localhost>  $date
EOF
chmod 0644 "$doc"/*

# Every file under /etc is a conffile: dpkg keeps an operator's edits across upgrades.
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"

# The shared libraries the binary links (libc, libgcc_s) as dependencies with their versions;
# procps for /bin/kill, which the unit's ExecReload runs (a minimal Debian has no other).
mkdir -p "$shlib/debian"
printf 'Source: ratelimiter\n\nPackage: ratelimiter\nArchitecture: any\n' >"$shlib/debian/control"
depends=$(cd "$shlib" && dpkg-shlibdeps -O "$root/usr/bin/ratelimiter" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
depends=${depends:+$depends, }procps

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: ratelimiter
Version: $version
Architecture: $arch
Maintainer: ratelimiter maintainers <ratelimiter@localhost>
Installed-Size: $size
Depends: $depends
Recommends: logrotate
Section: net
Priority: optional
Description: rate-limiting reverse proxy on pingora
 Sits in front of HTTP APIs, keys each request (client IP, a header, a query
 parameter, a cookie, a JWT claim), checks every limit that applies in a
 sliding-window log kept in Redis (shared by every node) or in memory, and
 proxies the request or answers 429 with rate-limit headers. A status page,
 a JSON admin API and Prometheus metrics are served on a separate admin port.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"

deb=$out/ratelimiter_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb.tmp" >/dev/null
mv "$deb.tmp" "$deb"
echo "$deb"
