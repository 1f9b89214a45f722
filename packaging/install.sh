#!/bin/sh
# Install egressd on a runner host or into a runner image (see docs/runner.md).
#
#   sudo ./install.sh --binary ./egressd --policy ./policy.yaml \
#       --runner-service actions.runner.acme-app.runner-1.service --runner-user runner
#
# Options:
#   --binary PATH          the egressd binary (default: ./egressd, else egressd on PATH)
#   --policy FILE          the policy to enforce (copied to /etc/egressd/policy.yaml)
#   --policy-url URL       instead of --policy: the policy service
#                          (https://HOST/v1/orgs/ORG/policy)
#   --token-file FILE      with --policy-url: the service token (copied to /etc/egressd/token, 0600)
#   --labels A,B           this runner's labels (they select policy overrides)
#   --runner-service UNIT  the runner's systemd unit: gets a drop-in that starts it
#                          only after egressd is ready, and sets the job hooks
#   --runner-user USER     added to the control group so its job hooks may talk to egressd
#   --group NAME           the control socket's group (default: egressd)
#   --extra "ARGS"         more `egressd boot` options (e.g. "--watch-tamper")
#   --destdir DIR          stage into DIR (an image build); nothing is enabled or started
#   --no-enable            install only; do not enable or start the service
#
# Idempotent: running it again with the same options changes nothing; with new
# options it replaces the files it installed. Needs root unless --destdir.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary=""
policy=""
policy_url=""
token_file=""
labels=""
runner_service=""
runner_user=""
group="egressd"
extra=""
destdir=""
enable=1

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --policy-url) policy_url=$2; shift 2 ;;
    --token-file) token_file=$2; shift 2 ;;
    --labels) labels=$2; shift 2 ;;
    --runner-service) runner_service=$2; shift 2 ;;
    --runner-user) runner_user=$2; shift 2 ;;
    --group) group=$2; shift 2 ;;
    --extra) extra=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --no-enable) enable=0; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  die "must run as root to install egressd on this machine (or pass --destdir DIR to stage an image)"
fi
if [ -n "$policy" ] && [ -n "$policy_url" ]; then
  die "give --policy FILE or --policy-url URL, not both"
fi
if [ -n "$policy_url" ] && [ -z "$token_file" ] && [ ! -e "$destdir/etc/egressd/token" ]; then
  die "--policy-url needs --token-file FILE (the policy service token)"
fi
if [ -z "$binary" ]; then
  if [ -x ./egressd ]; then binary=./egressd; else binary=$(command -v egressd || true); fi
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no egressd binary: pass --binary PATH"
if [ -z "$policy" ] && [ -z "$policy_url" ] && [ ! -e "$destdir/etc/egressd/policy.yaml" ]; then
  die "no policy: pass --policy FILE or --policy-url URL"
fi
if [ -n "$policy" ]; then
  "$binary" check "$policy" >/dev/null || die "$policy is not a valid policy (see the errors above); nothing was installed"
fi

root=${destdir%/}
install -d -m 0755 "$root/usr/local/bin" "$root/usr/local/lib/egressd" "$root/etc/egressd" \
  "$root/etc/systemd/system" "$root/etc/default"
install -m 0755 "$binary" "$root/usr/local/bin/egressd"
install -m 0644 "$here/egressd.service" "$root/etc/systemd/system/egressd.service"
install -m 0755 "$here/github-runner/job-started.sh" "$root/usr/local/lib/egressd/job-started.sh"
install -m 0755 "$here/github-runner/job-completed.sh" "$root/usr/local/lib/egressd/job-completed.sh"
[ -n "$policy" ] && install -m 0644 "$policy" "$root/etc/egressd/policy.yaml"
[ -n "$token_file" ] && install -m 0600 "$token_file" "$root/etc/egressd/token"

# The boot options, in the environment file the unit reads.
if [ -n "$policy_url" ]; then
  args="--policy-url $policy_url --token-file /etc/egressd/token"
else
  args="--policy /etc/egressd/policy.yaml"
fi
args="$args --control-group $group"
[ -n "$labels" ] && args="$args --labels $labels"
[ -n "$extra" ] && args="$args $extra"
tmp="$root/etc/default/egressd.tmp.$$"
printf '# Written by egressd install.sh; options of `egressd boot`.\nEGRESSD_ARGS="%s"\n' "$args" > "$tmp"
mv "$tmp" "$root/etc/default/egressd"

if [ -n "$runner_service" ]; then
  install -d -m 0755 "$root/etc/systemd/system/$runner_service.d"
  install -m 0644 "$here/runner-dropin.conf" "$root/etc/systemd/system/$runner_service.d/egressd.conf"
fi

if [ -n "$destdir" ]; then
  echo "install.sh: staged into $destdir; in the image also run: groupadd --system $group${runner_user:+; usermod -aG $group $runner_user}; systemctl enable egressd.service"
  exit 0
fi

getent group "$group" >/dev/null 2>&1 || groupadd --system "$group"
if [ -n "$runner_user" ]; then
  id "$runner_user" >/dev/null 2>&1 || die "no user $runner_user"
  id -nG "$runner_user" | tr ' ' '\n' | grep -qx "$group" || usermod -aG "$group" "$runner_user"
fi
if [ "$enable" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable egressd.service
  systemctl restart egressd.service
  [ -n "$runner_service" ] && systemctl try-restart "$runner_service" || true
  echo "install.sh: egressd installed and running (systemctl status egressd)"
else
  echo "install.sh: egressd installed; enable it with: systemctl enable --now egressd.service"
fi
