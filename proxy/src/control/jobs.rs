//! The job lifecycle on a runner: which job is active (its tags go into every
//! record and its repository and labels pick the policy override, through
//! [`Engine::set_job`]), and the summary of a job's records when it ends.
//! Also the service's health as the job commands and `status` see it.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use egressd_audit::ship::ShipperHandle;
use egressd_audit::{JobTags, Record, reader, summary};
use egressd_policy::JobContext;

use super::protocol::{JobReport, Request, Response, StatusReport};
use crate::engine::{ActiveJob, Engine};

/// Whether enforcement is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every hook attached, a valid policy active. The text says where the
    /// policy came from.
    Enforcing(String),
    /// Fail-closed state: traffic is denied but not as the policy says (no
    /// valid policy), or something was tampered with. The text says why.
    Degraded(String),
}

#[derive(Debug, Clone)]
struct CurrentJob {
    id: ulid::Ulid,
    tags: JobTags,
    started: jiff::Timestamp,
}

/// See the module documentation. Shared by the control server's connections.
pub struct JobService {
    engine: Arc<Engine>,
    runner_labels: Vec<String>,
    current: Mutex<Option<CurrentJob>>,
    health: ArcSwap<Health>,
    shipper: Option<ShipperHandle>,
}

/// How long `job end` waits for the shipper to get the job's records to the
/// policy service.
const SHIP_FLUSH: std::time::Duration = std::time::Duration::from_secs(15);

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService")
            .field("runner_labels", &self.runner_labels)
            .field("health", &self.health.load())
            .finish_non_exhaustive()
    }
}

impl JobService {
    /// The service for `engine`, on a runner with `runner_labels`; with a
    /// `shipper`, `job end` and [`JobService::flush_shipper`] wait for the
    /// records to reach the policy service.
    pub fn new(
        engine: Arc<Engine>,
        runner_labels: Vec<String>,
        health: Health,
        shipper: Option<ShipperHandle>,
    ) -> Arc<JobService> {
        Arc::new(JobService {
            engine,
            runner_labels,
            current: Mutex::new(None),
            health: ArcSwap::from_pointee(health),
            shipper,
        })
    }

    /// Flush the journal, then ship what it holds (bounded wait). `None`
    /// without a shipper; otherwise `shipped` or why not.
    pub async fn flush_shipper(&self) -> Option<String> {
        let shipper = self.shipper.as_ref()?;
        if let Err(e) = self.engine.journal().flush().await {
            return Some(format!("cannot flush the audit journal: {e}"));
        }
        Some(
            match shipper
                .flush(tokio::time::Instant::now() + SHIP_FLUSH)
                .await
            {
                Ok(_) => "shipped".to_owned(),
                Err(e) => {
                    tracing::warn!(error = %e, "records not shipped yet; they stay in the journal");
                    e.to_string()
                }
            },
        )
    }

    /// Change the health the service reports (and puts on job summaries).
    pub fn set_health(&self, health: Health) {
        self.health.store(Arc::new(health));
    }

    /// The current health.
    pub fn health(&self) -> Arc<Health> {
        self.health.load_full()
    }

    /// Answer one request.
    pub async fn handle(&self, req: Request) -> Response {
        match req {
            Request::JobStart { tags, labels } => self.start(tags, labels),
            Request::JobEnd { id } => match self.end(id.as_deref()).await {
                Ok(report) => Response::JobEnded(report),
                Err(message) => Response::Error { message },
            },
            Request::Flush => match self.engine.journal().flush().await {
                Ok(()) => {
                    self.flush_shipper().await;
                    Response::Flushed
                }
                Err(e) => Response::Error {
                    message: format!("cannot flush the audit journal: {e}"),
                },
            },
            Request::Status => Response::Status(self.status()),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<CurrentJob>> {
        // The guarded value is replaced whole; a panic elsewhere cannot leave
        // it half-written.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&self, tags: JobTags, labels: Vec<String>) -> Response {
        let mut all_labels = self.runner_labels.clone();
        for l in labels {
            if !all_labels.iter().any(|have| have.eq_ignore_ascii_case(&l)) {
                all_labels.push(l);
            }
        }
        let policy_override = self.engine.policy().matching_override(&JobContext {
            repository: tags.repository.as_deref(),
            labels: &all_labels,
        });
        let job = CurrentJob {
            id: egressd_audit::id::next(),
            tags: tags.clone(),
            started: egressd_audit::time_format::now(),
        };
        let id = job.id.to_string();
        {
            let mut current = self.current();
            if let Some(old) = current.as_ref() {
                tracing::warn!(
                    old = %old.id,
                    "a job started while another was still active (its end hook did not run); the old one is replaced"
                );
            }
            *current = Some(job);
            self.engine.set_job(ActiveJob {
                tags: Some(Arc::new(tags.clone())),
                labels: all_labels,
            });
        }
        tracing::info!(%id, repository = ?tags.repository, run_id = ?tags.run_id, job = ?tags.job, ?policy_override, "job started");
        Response::JobStarted {
            id,
            policy_override,
        }
    }

    async fn end(&self, id: Option<&str>) -> Result<JobReport, String> {
        let job = {
            let mut current = self.current();
            match (current.as_ref(), id) {
                (None, _) => {
                    return Err("no job is active: `egressd job start` did not run for this job, or egressd restarted since".into());
                }
                (Some(active), Some(want)) if active.id.to_string() != want => {
                    return Err(format!(
                        "job {want} is not the active job ({}); it was ended or replaced already",
                        active.id
                    ));
                }
                _ => {}
            }
            self.engine.set_job(ActiveJob {
                tags: None,
                labels: self.runner_labels.clone(),
            });
            current.take()
        };
        let Some(job) = job else {
            return Err("no job is active".into());
        };
        // The job's counted records go into its summary.
        self.engine.flush_coalesced().await;
        self.engine
            .journal()
            .flush()
            .await
            .map_err(|e| format!("cannot flush the audit journal: {e}"))?;
        let dir = self.engine.journal().dir().to_owned();
        let (tags, started) = (job.tags.clone(), job.started);
        let records = tokio::task::spawn_blocking(move || job_records(&dir, &tags, started))
            .await
            .map_err(|e| format!("reading the journal failed: {e}"))??;
        let count = records.len() as u64;
        let sum = summary::summarize(records);
        let mut markdown = String::new();
        if let Health::Degraded(why) = &*self.health() {
            markdown.push_str(&format!(
                "> **egressd is degraded: {why}. All egress of this job was denied.**\n\n"
            ));
        }
        markdown.push_str(&sum.to_markdown());
        let shipping = self.flush_shipper().await;
        tracing::info!(id = %job.id, allowed = sum.allowed, denied = sum.denied, ?shipping, "job ended");
        Ok(JobReport {
            id: job.id.to_string(),
            tags: job.tags,
            markdown,
            allowed: sum.allowed,
            denied: sum.denied,
            would_deny: sum.would_deny,
            records: count,
            shipping,
        })
    }

    fn status(&self) -> StatusReport {
        let (state, detail) = match &*self.health() {
            Health::Enforcing(d) => ("enforcing", d.clone()),
            Health::Degraded(d) => ("degraded", d.clone()),
        };
        StatusReport {
            state: state.into(),
            detail,
            job: self.current().as_ref().map(|j| j.tags.clone()),
            journal_queue: self.engine.journal().queue_depth(),
        }
    }
}

/// The records of the job with `tags` written since `started`. Unreadable or
/// corrupt lines are logged and skipped (the reader's torn-line rule).
fn job_records(
    dir: &Path,
    tags: &JobTags,
    started: jiff::Timestamp,
) -> Result<Vec<Record>, String> {
    let records = reader::read_dir(dir).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for rec in records {
        match rec {
            Ok(r) if r.ts >= started && r.job.as_deref() == Some(tags) => out.push(r),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipped while summarising the job"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use egressd_audit::{HostSource, JobTags, Kind};
    use egressd_policy::{Decision, Reason};

    use super::*;
    use crate::limits::Limits;
    use crate::test_support::TestEngine;

    /// No interval flusher runs here: only `job end` can write the counted
    /// record, and the summary counts it.
    #[tokio::test]
    async fn job_end_writes_the_counted_records_before_it_summarises() {
        let t = TestEngine::new("version: 1\n", Limits::default());
        let jobs = JobService::new(
            Arc::clone(&t.engine),
            Vec::new(),
            Health::Enforcing("test".into()),
            None,
        );
        let tags = JobTags {
            repository: Some("octo/flood".into()),
            run_id: Some("1".into()),
            ..JobTags::default()
        };
        let started = jobs
            .handle(Request::JobStart {
                tags,
                labels: Vec::new(),
            })
            .await;
        assert!(
            matches!(started, Response::JobStarted { .. }),
            "{started:?}"
        );
        let sent = 50;
        for i in 0..sent {
            let mut rec = t
                .engine
                .record(Kind::Dns, &Decision::engine_deny(Reason::DnsRefused));
            rec.host = Some(format!("n{i}.flood.test"));
            rec.host_source = HostSource::DnsQuery;
            rec.src = Some("127.0.0.1:40000".parse().unwrap());
            t.engine.audit(rec).await;
        }
        let Response::JobEnded(report) = jobs.handle(Request::JobEnd { id: None }).await else {
            panic!("job end failed");
        };
        assert_eq!(report.denied, sent, "{}", report.markdown);
        assert!(
            report.markdown.contains(&format!(
                "{} repeated decision(s) were recorded as counts",
                sent - crate::coalesce::VERBATIM
            )),
            "{}",
            report.markdown
        );
    }
}
