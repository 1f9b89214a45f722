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
# The Docker tests use the Debian engine's own binaries by full path (another
# `docker` may be first on PATH), a local registry, and nft to delete the
# tables dockerd made.
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
have nft || need+=(nftables)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: everything present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing ${need[*]}; run as root or install them yourself" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Installing docker.io or docker-registry must not start their services (a
# dockerd on the default 172.17.0.0/16 bridge): deny service starts for the
# install when the system does not already.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-deps: done"
