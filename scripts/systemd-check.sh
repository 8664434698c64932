#!/usr/bin/env bash
# Installs the built Debian package on a fresh Debian 12 root and runs it under a real systemd,
# as on a server. debootstrap makes the root once (kept in /var/tmp/ratelimiter-debian-base;
# each run starts from a fresh copy of it); systemd-nspawn boots it as a container: its own
# PID, mount, cgroup, IPC and UTS namespaces, /dev of its own, /proc/sys and /sys read-only,
# the host's network (so the packaged config's ports are the host's). Then, inside:
#   dpkg -i starts the service; a request goes through it to an upstream; the process runs as
#   a dynamic user with only CAP_NET_BIND_SERVICE, no new privileges and a seccomp filter;
#   systemctl reload applies a config and refuses a broken one (the service keeps running);
#   logrotate rotates the access log and USR1 reopens it; a reinstall restarts it and keeps
#   an edited conffile; a remove stops it and a reinstall starts it again; the README's
#   zero-downtime drop-in hands over on systemctl reload with no failed request; systemctl
#   stop drains it; a purge removes it all.
# Needs root, a Debian mirror (debootstrap, and systemd-container for nspawn when missing),
# and ports 8000, 8080 and 9090 free. Not part of scripts/test.sh: CI machines may not allow
# booting a container. Usage: sudo scripts/systemd-check.sh [path/to/package.deb]
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:-$(ls -t target/debian/ratelimiter_*.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "no package: run scripts/package.sh first" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
for port in 8000 8080 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: the packaged config listens on 8080 and 9090, its upstream is 8000" >&2
    exit 1
  fi
done

base=/var/tmp/ratelimiter-debian-base
root=/var/tmp/ratelimiter-debian-run
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -f "$base/.complete" ]; then
  echo "making a Debian 12 root with debootstrap (once; kept in $base)" >&2
  rm -rf "$base"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,logrotate,procps \
    bookworm "$base" http://deb.debian.org/debian >/dev/null || {
    echo "debootstrap failed: is a Debian mirror reachable?" >&2
    exit 1
  }
  touch "$base/.complete"
fi
rm -rf "$root"
cp -a "$base" "$root"
cp "$deb" "$root/root/ratelimiter.deb"
# No consoles in a namespace: their gettys would hold the boot.
systemctl --root="$root" mask getty.target serial-getty@ttyS0.service console-getty.service >/dev/null 2>&1

upstream_dir=$(mktemp -d)
echo "hello from the upstream" >"$upstream_dir/index.html"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$upstream_dir" >/dev/null 2>&1 &
upstream=$!

systemd-nspawn --quiet --register=no --keep-unit --directory="$root" --boot >/dev/null 2>&1 &
nspawn=$!
cleanup() {
  kill "$nspawn" 2>/dev/null || true # nspawn powers the container off on SIGTERM
  wait "$nspawn" 2>/dev/null || true
  kill "$upstream" 2>/dev/null || true
  rm -rf "$upstream_dir"
}
trap cleanup EXIT

poll() { # poll SECONDS COMMAND...: until the command succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.2
  done
}
poll 10 pgrep -P "$nspawn" || { echo "the container did not start" >&2; exit 1; }
pid1=$(pgrep -P "$nspawn")
inside() { nsenter --target "$pid1" --all "$@"; }
system_up() { case "$(inside systemctl is-system-running 2>/dev/null)" in running | degraded) return 0 ;; *) return 1 ;; esac; }
poll 60 system_up || { echo "systemd did not finish booting: $(inside systemctl is-system-running); $(inside systemctl list-jobs --no-pager | head -5)" >&2; exit 1; }
check() { printf '%-58s' "$1"; shift; if "$@"; then echo ok; else echo FAILED; exit 1; fi; }

echo "systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) in a fresh Debian $(cat "$root/etc/debian_version"); $deb"
inside dpkg -i /root/ratelimiter.deb >/dev/null
check "dpkg -i enables and starts the service" poll 15 inside systemctl is-active ratelimiter
through() { curl -sf localhost:8080/ | grep -q "hello from the upstream"; }
check "a request goes through to the upstream" poll 5 through
answers() { curl -sf localhost:9090/ >/dev/null && curl -sf localhost:9090/health/ready >/dev/null; }
check "the status page and readiness answer" answers
main=$(inside systemctl show -p MainPID --value ratelimiter)
status=$(inside cat "/proc/$main/status")
has() { grep -Eq "$1" <<<"$status"; }
check "it runs as a dynamic user, not root" has '^Uid:[[:space:]]+[1-9][0-9]{3,}'
check "with CAP_NET_BIND_SERVICE only (effective)" has '^CapEff:[[:space:]]+0000000000000400$'
check "with CAP_NET_BIND_SERVICE only (bounding set)" has '^CapBnd:[[:space:]]+0000000000000400$'
check "no new privileges" has '^NoNewPrivs:[[:space:]]+1'
check "a seccomp filter" has '^Seccomp:[[:space:]]+2'
echo "  systemd-analyze security: $(inside systemd-analyze security ratelimiter --no-pager | tail -1 | sed 's/.*ratelimiter.service: //')"

reload_counted() { curl -s localhost:9090/metrics | grep -Eq 'config_reloads_total\{result="success".* 1$'; }
# The HUP is taken asynchronously: the count is polled for.
reloaded() { inside systemctl reload ratelimiter && poll 5 reload_counted; }
check "systemctl reload applies the config (SIGHUP)" reloaded
inside cp /etc/ratelimiter/ratelimiter.toml /root/good.toml
inside sh -c 'echo "bogus = 1" >>/etc/ratelimiter/ratelimiter.toml'
refused() {
  ! inside systemctl reload ratelimiter 2>/dev/null && inside systemctl is-active ratelimiter >/dev/null &&
    curl -sf localhost:8080/ >/dev/null
}
check "a broken config fails the reload and the service runs on" refused
inside cp /root/good.toml /etc/ratelimiter/ratelimiter.toml

logs=$root/var/log/private/ratelimiter
inside logrotate -f /etc/logrotate.d/ratelimiter
curl -s -o /dev/null localhost:8080/after-rotation
rotated() { grep -q after-rotation "$logs/access.log" && [ -f "$logs/access.log.1" ]; }
check "logrotate rotates the access log and USR1 reopens it" poll 5 rotated

inside sh -c 'echo "# an operator edit" >>/etc/ratelimiter/ratelimiter.toml'
inside dpkg -i /root/ratelimiter.deb >/dev/null
upgraded() {
  [ "$(inside systemctl show -p MainPID --value ratelimiter)" != "$main" ] &&
    tail -1 "$root/etc/ratelimiter/ratelimiter.toml" | grep -q 'an operator edit' &&
    poll 10 curl -sf localhost:8080/
}
check "a reinstall restarts it and keeps the edited conffile" upgraded
inside dpkg -r ratelimiter >/dev/null
removed() {
  ! inside systemctl is-active ratelimiter >/dev/null && [ ! -e "$root/usr/bin/ratelimiter" ] &&
    [ -e "$root/etc/ratelimiter/ratelimiter.toml" ]
}
check "dpkg -r stops it and keeps the config" removed
inside dpkg -i /root/ratelimiter.deb >/dev/null
check "installed again, it starts again" poll 15 inside systemctl is-active ratelimiter
# The README's zero-downtime upgrade under systemd: a drop-in makes the unit Type=forking and
# systemctl reload a `-u` handover. Clients on fresh connections meanwhile must get answers
# (the config's 429s included), never a refused connection or a 5xx.
inside mkdir -p /etc/systemd/system/ratelimiter.service.d
cat >"$root/etc/systemd/system/ratelimiter.service.d/upgrade.conf" <<'UNIT'
[Service]
Type=forking
PIDFile=/run/ratelimiter/ratelimiter.pid
ExecStart=
ExecStart=/usr/bin/ratelimiter -d -c /etc/ratelimiter/ratelimiter.toml
ExecReload=
ExecReload=/usr/bin/ratelimiter -t -c /etc/ratelimiter/ratelimiter.toml
ExecReload=/usr/bin/ratelimiter -u -d -c /etc/ratelimiter/ratelimiter.toml
UNIT
sed -i 's|^grace_period_seconds = |pid_file = "/run/ratelimiter/ratelimiter.pid"\ngrace_period_seconds = |' \
  "$root/etc/ratelimiter/ratelimiter.toml"
inside systemctl daemon-reload
inside systemctl restart ratelimiter
poll 10 curl -sf localhost:8080/ || true
before=$(inside systemctl show -p MainPID --value ratelimiter)
codes=$(mktemp)
(end=$((SECONDS + 6)); while [ $SECONDS -lt $end ]; do
  curl -s -o /dev/null -w '%{http_code}\n' localhost:8080/ >>"$codes"
done) &
clients=$!
sleep 1 # the clients are under way before the reload
took=$SECONDS
inside systemctl reload ratelimiter
took=$((SECONDS - took))
wait "$clients"
after=$(inside systemctl show -p MainPID --value ratelimiter)
answered=$(grep -c -E '^(200|429)$' "$codes" || true)
failed=$(grep -c -v -E '^(200|429)$' "$codes" || true)
rm -f "$codes"
echo "  upgrade by systemctl reload: ${took} s; main PID $before -> $after; $answered answered, $failed failed"
upgraded_live() {
  [ "$before" != "$after" ] && [ "$failed" -eq 0 ] && [ "$answered" -gt 0 ] &&
    inside systemctl is-active ratelimiter >/dev/null
}
check "the drop-in's reload hands over with no failed request" upgraded_live
inside rm -r /etc/systemd/system/ratelimiter.service.d
inside systemctl daemon-reload
stopped() { inside systemctl stop ratelimiter && ! inside systemctl is-active ratelimiter >/dev/null; }
check "systemctl stop drains and stops it" stopped
inside dpkg --purge ratelimiter >/dev/null
purged() {
  [ ! -e "$root/usr/bin/ratelimiter" ] && [ ! -e "$root/etc/ratelimiter/ratelimiter.toml" ] &&
    [ ! -e "$logs" ]
}
check "a purge removes the binary, config and logs" purged
echo "all checks passed"
