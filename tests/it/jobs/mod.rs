//! The job corpus: real tools run as a CI job runs them (git, pip, npm, apt,
//! curl, wget, python's urllib and requests), in a filtered child cgroup,
//! against real servers in a test world ([`world`]), through the rollout
//! path a runner takes: audit mode with nothing allowed, `egressd audit
//! suggest`, enforce mode with the suggestion (every tool succeeds, not one
//! deny record, `job end --fail-on-deny` exits 0), then a poisoned step that
//! is refused, audited with its process, and fails the job. One file per
//! tool.

mod rollout;
mod world;

mod apt;
mod git;
mod http;
mod npm;
mod pip;
