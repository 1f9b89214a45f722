#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_STARTED: tag every audit record from now on with
# this job (GITHUB_REPOSITORY, GITHUB_WORKFLOW, GITHUB_RUN_ID,
# GITHUB_RUN_ATTEMPT, GITHUB_JOB come from the runner) and apply the policy
# override for the repository and labels. The runner user must be in the
# --control-group of `egressd boot` (install.sh: group "egressd").
# EGRESSD_JOB_LABELS (optional, comma-separated) adds labels for this job.
set -eu
exec /usr/local/bin/egressd job start \
  --control-socket "${EGRESSD_CONTROL_SOCKET:-/run/egressd/control.sock}" \
  ${EGRESSD_JOB_LABELS:+--labels "$EGRESSD_JOB_LABELS"}
