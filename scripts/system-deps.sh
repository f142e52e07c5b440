#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real. Only missing packages are installed, so
# a second run costs nothing. Later features add their daemons to PACKAGES.
set -euo pipefail

PACKAGES=(
    python3-venv
    haproxy     # the local proxy: haproxy -c, the runtime API, master-worker reloads
    nginx       # the edge gateway: nginx -t, reloads, end-to-end routing
    openssl     # self-signed certificates for the ssl servers the renderer tests validate
    etcd-server # the etcd store: its contract tests run against a real etcd
    etcd-client # etcdctl: the registration keys are read as confd or a shell script would
    puppet      # the ENC tests: puppet node find / puppet apply with treeherd as the node classifier
    iproute2    # the multi-host tests: `ip netns`, veths and a bridge (treeherd.testing.hosts)
    docker.io   # the docker executor's tests: dockerd (started by the tests when none runs) and the CLI
    chromium    # the web console's browser tests: Playwright drives /usr/bin/chromium (nothing downloaded)
)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "error: the tests need these Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
