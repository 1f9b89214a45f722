#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED: print the job's egress summary (also
# appended to $GITHUB_STEP_SUMMARY), flush the audit journal. With
# EGRESSD_FAIL_ON_DENY=1 the job fails when anything was denied.
set -eu
if [ "${EGRESSD_FAIL_ON_DENY:-0}" = 1 ]; then
  set -- --fail-on-deny
else
  set --
fi
exec /usr/local/bin/egressd job end \
  --control-socket "${EGRESSD_CONTROL_SOCKET:-/run/egressd/control.sock}" "$@"
