//! `egressd job start|end|status`: the runner's job hooks. They talk to the
//! running `egressd boot` over its control socket (root or the
//! `--control-group` only). `start` tags every following record with the job
//! from the GitHub environment and picks the policy override for its
//! repository and labels; `end` clears the job, flushes the journal and
//! prints the job's summary (also appended to `$GITHUB_STEP_SUMMARY`), and
//! with `--fail-on-deny` exits 1 when something was denied.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use egressd_audit::JobTags;

use crate::cmd::UsageError;
use crate::control::{ControlClient, DEFAULT_SOCKET, Request, Response};

/// Subcommands of `egressd job`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// A job starts: tag records with it and apply its policy override.
    #[command(after_help = "Example (ACTIONS_RUNNER_HOOK_JOB_STARTED script):\n  \
        egressd job start --labels self-hosted,linux")]
    Start(StartArgs),
    /// The job ended: print its summary, flush the audit journal.
    #[command(after_help = "Example (ACTIONS_RUNNER_HOOK_JOB_COMPLETED script):\n  \
        egressd job end --fail-on-deny")]
    End(EndArgs),
    /// Show whether enforcement is whole and which job is active.
    Status(SocketArgs),
}

/// The control socket flag all job commands take.
#[derive(clap::Args, Debug)]
pub struct SocketArgs {
    /// The control socket of `egressd boot`.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
}

/// Options of `egressd job start`.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Control socket.
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Runner labels of this job, comma-separated (added to boot's --labels;
    /// they select policy overrides).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub labels: Vec<String>,
}

/// Options of `egressd job end`.
#[derive(clap::Args, Debug)]
pub struct EndArgs {
    /// Control socket.
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Exit 1 when anything was denied during the job (fails the job).
    #[arg(long)]
    pub fail_on_deny: bool,
    /// Only end the job with this id (printed by `job start`).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

/// Entry point.
pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Start(a) => start(a),
        Command::End(a) => end(a),
        Command::Status(a) => status(a),
    }
}

/// The job's tags from the GitHub Actions environment.
fn tags_from_env(get: impl Fn(&str) -> Option<String>) -> Result<JobTags, UsageError> {
    let tags = JobTags {
        repository: get("GITHUB_REPOSITORY"),
        workflow: get("GITHUB_WORKFLOW"),
        run_id: get("GITHUB_RUN_ID"),
        run_attempt: get("GITHUB_RUN_ATTEMPT"),
        job: get("GITHUB_JOB"),
    };
    if tags.repository.is_none() {
        return Err(UsageError(
            "GITHUB_REPOSITORY is not set: `egressd job start` runs from the runner's ACTIONS_RUNNER_HOOK_JOB_STARTED hook, inside a job".into(),
        ));
    }
    Ok(tags)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn client(socket: &SocketArgs) -> ControlClient {
    ControlClient::new(&socket.control_socket, Duration::from_secs(60))
}

fn fail(response: Response) -> anyhow::Error {
    match response {
        Response::Error { message } => anyhow::anyhow!("egressd refused: {message}"),
        other => anyhow::anyhow!("egressd answered unexpectedly: {other:?}"),
    }
}

fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    let tags = tags_from_env(env)?;
    let labels = a
        .labels
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    match client(&a.socket).request(&Request::JobStart {
        tags: tags.clone(),
        labels,
    })? {
        Response::JobStarted {
            id,
            policy_override,
        } => {
            let applied = policy_override.map_or_else(
                || "the base policy".to_owned(),
                |i| format!("policy override overrides[{i}]"),
            );
            eprintln!(
                "egressd: job {id} started for {} ({applied} applies)",
                tags.repository.as_deref().unwrap_or("?")
            );
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(fail(other)),
    }
}

fn end(a: EndArgs) -> anyhow::Result<ExitCode> {
    let report = match client(&a.socket).request(&Request::JobEnd { id: a.id })? {
        Response::JobEnded(r) => r,
        other => return Err(fail(other)),
    };
    println!("{}", report.markdown);
    if let Some(s) = report.shipping.as_deref().filter(|s| *s != "shipped") {
        eprintln!(
            "egressd: the job's audit records are not at the policy service yet ({s}); they stay in the runner's journal and are sent later"
        );
    }
    if let Some(path) = env("GITHUB_STEP_SUMMARY") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open GITHUB_STEP_SUMMARY {path}"))?;
        writeln!(f, "{}", report.markdown)
            .with_context(|| format!("cannot append to GITHUB_STEP_SUMMARY {path}"))?;
    }
    if a.fail_on_deny && report.denied > 0 {
        eprintln!(
            "egressd: {} connection(s) or queries were denied during this job (--fail-on-deny)",
            report.denied
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(a: SocketArgs) -> anyhow::Result<ExitCode> {
    match client(&a).request(&Request::Status)? {
        Response::Status(s) => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(if s.state == "enforcing" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        other => Err(fail(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_the_github_environment() {
        let vars = [
            ("GITHUB_REPOSITORY", "octo/app"),
            ("GITHUB_WORKFLOW", "CI"),
            ("GITHUB_RUN_ID", "42"),
            ("GITHUB_RUN_ATTEMPT", "1"),
            ("GITHUB_JOB", "build"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let tags = tags_from_env(get).unwrap();
        assert_eq!(tags.repository.as_deref(), Some("octo/app"));
        assert_eq!(tags.job.as_deref(), Some("build"));
        assert!(tags_from_env(|_| None).is_err());
    }
}
