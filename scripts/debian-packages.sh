#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use, when they are missing:
#   (default)  postgresql (server, psql, pgbench), pgbouncer (benchmark yardstick), openssl,
#              qemu-user-static (the release test runs the linux/arm64 kubectl-chaperone with it), and an
#              arm64 sysroot for that (below)
#   node       what the local node runs (e2e/harness/node.ts): containerd, runc, the CNI plugins,
#              iptables (kube-proxy and the bridge plugin's masquerading, inside the node's own network
#              namespace), and util-linux's unshare/nsenter
# Idempotent: with everything present it only checks and prints nothing.
set -euo pipefail

group=${1:-tests}
missing=()
services=()
case "$group" in
  tests)
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$pg_bin" && -x "$pg_bin/initdb" && -x "$pg_bin/postgres" ]] || missing+=(postgresql)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v pgbench >/dev/null || missing+=(postgresql-contrib)
    [[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    services=(postgresql pgbouncer)
    ;;
  node)
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v unshare >/dev/null && command -v nsenter >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v openssl >/dev/null || missing+=(openssl)
    services=(containerd)
    ;;
  *) echo "debian-packages: unknown group '$group' (tests or node)" >&2; exit 2 ;;
esac

# The arm64 C runtime (glibc, libstdc++, libgcc) from Debian's arm64 packages, unpacked into the tool
# cache, not installed: qemu-aarch64-static -L uses it as the root of the arm64 executable. apt reads and
# writes private lists for it; the machine's apt configuration and dpkg database are left alone.
arm64_sysroot() {
  local cache=${CHAPERONE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chaperone}
  local sysroot="$cache/arm64-sysroot"
  [[ -e "$sysroot/root/lib/ld-linux-aarch64.so.1" ]] && return 0
  command -v apt-get >/dev/null || { echo "debian-packages: no apt-get for the arm64 sysroot" >&2; return 1; }
  echo "debian-packages: unpacking an arm64 sysroot (libc6, libstdc++6, libgcc-s1) into $sysroot" >&2
  mkdir -p "$cache"
  local work; work=$(mktemp -d "$cache/.arm64-sysroot.XXXXXX")
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root"
  local apt=(apt-get -qq -o APT::Sandbox::User=root -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache" -o Dir::State::status=/dev/null)
  if "${apt[@]}" update && (cd "$work" && "${apt[@]}" download libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64); then
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
    rm -rf "$work/lists" "$work/cache" "$work"/*.deb "$sysroot"
    mv "$work" "$sysroot"
  else
    rm -rf "$work"
    echo "debian-packages: could not fetch the arm64 packages" >&2
    return 1
  fi
}

# What each group needs beyond packages.
finish() { if [[ "$group" == tests ]]; then arm64_sysroot; fi; }

if [[ ${#missing[@]} -eq 0 ]]; then
  finish
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo=(sudo); else
    echo "debian-packages: missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
else sudo=(); fi
command -v apt-get >/dev/null || { echo "debian-packages: missing ${missing[*]} and no apt-get on this machine" >&2; exit 1; }

echo "debian-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start system services; the tests run their own throwaway servers instead.
for svc in "${services[@]}"; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then "${sudo[@]}" systemctl stop "$svc" || true; fi
  if command -v service >/dev/null; then "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true; fi
done
finish
