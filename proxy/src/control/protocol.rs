//! The control protocol's messages: line-delimited JSON, one request and one
//! response per line. `op` names the request, `result` the response; unknown
//! fields are ignored so that a newer client can talk to an older service.

use egressd_audit::JobTags;
use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A job starts: tag every following record with `tags` and pick the
    /// policy override for the repository and `labels` (added to the
    /// runner's own `--labels`).
    JobStart {
        /// The job's GitHub tags.
        tags: JobTags,
        /// Extra runner labels for this job.
        #[serde(default)]
        labels: Vec<String>,
    },
    /// The job ended: clear it, flush the journal, answer its summary. `id`
    /// (from the `job_started` answer) guards against ending another job;
    /// without it the active job ends.
    JobEnd {
        /// The id `job_start` answered, if the caller kept it.
        #[serde(default)]
        id: Option<String>,
    },
    /// Write and sync the journal now.
    Flush,
    /// What state is enforcement in.
    Status,
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The job is active.
    JobStarted {
        /// Its id (a ULID), for `job_end`.
        id: String,
        /// The policy override that applies to it (`overrides[i]`), if any.
        #[serde(default)]
        policy_override: Option<usize>,
    },
    /// The job ended; its summary.
    JobEnded(JobReport),
    /// The journal is flushed.
    Flushed,
    /// The service's state.
    Status(StatusReport),
    /// The request could not be served.
    Error {
        /// One sentence saying what went wrong and what to do.
        message: String,
    },
}

/// The summary of one job, from the audit records it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job's id.
    pub id: String,
    /// Its tags.
    pub tags: JobTags,
    /// The Markdown summary (`egressd_audit::summary`), with a warning on top
    /// when enforcement was degraded.
    pub markdown: String,
    /// Decisions that let traffic through.
    pub allowed: u64,
    /// Decisions that refused traffic.
    pub denied: u64,
    /// Audit mode: allowed, but enforce mode would have denied.
    pub would_deny: u64,
    /// Records of the job read from the journal (closing records included).
    pub records: u64,
    /// With shipping on: `shipped`, or why the records are not all at the
    /// policy service yet (they stay in the journal and are sent later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<String>,
}

/// The service's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `enforcing`, or `degraded` when no valid policy is active (everything
    /// is denied) or a hook is missing.
    pub state: String,
    /// Why it is degraded, or where the policy came from.
    pub detail: String,
    /// The active job, if any.
    #[serde(default)]
    pub job: Option<JobTags>,
    /// Records waiting for the journal writer.
    pub journal_queue: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let req = Request::JobStart {
            tags: JobTags {
                repository: Some("octo/app".into()),
                ..JobTags::default()
            },
            labels: vec!["linux".into()],
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"op":"job_start","tags":{"repository":"octo/app"},"labels":["linux"]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"job_end"}"#).unwrap(),
            Request::JobEnd { id: None }
        );
        assert_eq!(
            serde_json::to_string(&Response::Flushed).unwrap(),
            r#"{"result":"flushed"}"#
        );
    }
}
