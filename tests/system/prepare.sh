#!/usr/bin/env bash
# Prepares what tests/test_systemd_real.py needs, as root on Debian 12, from Debian's packages only:
#   - debootstrap (host package; harmless);
#   - a private systemd-nspawn: systemd-container + libsystemd-shared unpacked with `dpkg -x`, NOT installed
#     (installing systemd-container would upgrade the host's systemd);
#   - a minimal bookworm tree with systemd as init and python3, cached by its package list so reruns are fast.
# Prints the cache directory. Idempotent; safe to rerun. Override the cache with EDGE_TOKEN_SYSTEST_CACHE.
set -euo pipefail

CACHE=${EDGE_TOKEN_SYSTEST_CACHE:-/var/cache/edge-token-systest}
SUITE=bookworm
# procps: /bin/kill for ExecReload=; passwd/util-linux (runuser, setpriv) come with minbase.
PACKAGES=systemd,systemd-sysv,dbus,libnss-systemd,python3,python3-venv,procps
KEY=$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
TREE=$CACHE/tree-$KEY
NSPAWN=$CACHE/nspawn

[ "$(id -u)" = 0 ] || { echo "prepare.sh: must run as root" >&2; exit 77; }
mkdir -p "$CACHE"
export DEBIAN_FRONTEND=noninteractive

apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }; }

if ! command -v debootstrap >/dev/null; then
    apt_update
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

if [ ! -x "$NSPAWN/usr/bin/systemd-nspawn" ]; then
    apt_update
    work=$(mktemp -d "$CACHE/nspawn.XXXXXX")
    chown _apt "$work" 2>/dev/null || true   # apt-get download fetches as the _apt user where it can
    (cd "$work" && apt-get download -qq systemd-container libsystemd-shared >/dev/null)
    mkdir "$work/root"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
    rm -rf "$NSPAWN"
    mv "$work/root" "$NSPAWN"
    rm -rf "$work"
fi

if [ ! -e "$TREE/.complete" ]; then
    # The mirror the machine already uses for this suite (CI machines reach Debian's registry only).
    MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s { print $1; exit }')
    if [ -z "$MIRROR" ]; then
        apt_update
        MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$SUITE" '$2 == s { print $1; exit }')
    fi
    [ -n "$MIRROR" ] || { echo "prepare.sh: no apt source for $SUITE configured" >&2; exit 69; }
    work=$(mktemp -d "$CACHE/tree.XXXXXX")
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$work"; exit 69; }
    rm -rf "$work/var/cache/apt/archives/"*.deb
    touch "$work/.complete"
    rm -rf "$TREE"
    mv "$work" "$TREE"
fi
echo "$CACHE"
