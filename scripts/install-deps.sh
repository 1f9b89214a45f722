#!/usr/bin/env bash
# Installs the system packages egressd's build and tests use (Debian/Ubuntu),
# only those that are missing. Needs root for apt; without root it only reports.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang-19 || need+=(clang-19)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -e /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
have bpftool || need+=(bpftool)
have kdig || need+=(knot-dnsutils)
have curl || need+=(curl)
have ip || need+=(iproute2)
have python3 || need+=(python3)
have sysctl || need+=(procps)
have openssl || need+=(openssl)
have pg_ctlcluster || need+=(postgresql)
# The job corpus (tests/it/jobs/): real tools and the servers they talk to.
have git || need+=(git)
have nginx || need+=(nginx)
have fcgiwrap || need+=(fcgiwrap)
have wget || need+=(wget)
have dpkg-scanpackages || need+=(dpkg-dev)
have apt-ftparchive || need+=(apt-utils)
have node || need+=(nodejs)
have npm || need+=(npm)
/usr/bin/python3 -c 'import requests' 2>/dev/null || need+=(python3-requests)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# The Docker tests use the Debian engine's own binaries by full path (another
# `docker` may be first on PATH), a local registry, and nft to delete the
# tables dockerd made.
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
have nft || need+=(nftables)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them yourself" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Installing docker.io, docker-registry, nginx or postgresql must not start
  # their services (a dockerd on the default 172.17.0.0/16 bridge, a web
  # server on port 80): the tests start their own. Service starts are denied
  # for the install when the system does not already deny them.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Servers of the job corpus that are not Debian packages, in a cache the
# tests find them in (EGRESSD_TEST_CACHE overrides it): a PEP 503 index in a
# venv (with what builds the wheel it serves) and an npm registry.
cache="${EGRESSD_TEST_CACHE:-/var/cache/egressd-test}"
if [ "$(id -u)" = 0 ] || [ -w "$(dirname "$cache")" ]; then
  mkdir -p "$cache"
  if [ ! -x "$cache/pypiserver/bin/pypi-server" ]; then
    echo "install-deps: pypiserver into $cache/pypiserver"
    rm -rf "$cache/pypiserver"
    /usr/bin/python3 -m venv "$cache/pypiserver"
    PIP_CONFIG_FILE=/dev/null "$cache/pypiserver/bin/pip" install -q \
      --disable-pip-version-check 'pypiserver==2.3.2' 'setuptools>=68' wheel >/dev/null
  fi
  if [ ! -x "$cache/verdaccio/node_modules/.bin/verdaccio" ]; then
    echo "install-deps: verdaccio into $cache/verdaccio"
    rm -rf "$cache/verdaccio"
    mkdir -p "$cache/verdaccio"
    npm install -s --prefix "$cache/verdaccio" --no-audit --no-fund --save-exact verdaccio@6.8.0 >/dev/null
  fi
fi
echo "install-deps: everything present"
