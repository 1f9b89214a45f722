//! `egressd audit export|summary|suggest`: read the local journal (streaming,
//! constant memory), filter it, and write records, the endpoint summary or a
//! suggested policy; `export --server` streams the same formats from the
//! policy service's central store instead. The formats live in
//! `egressd_audit`; this module owns the flags, the output files, progress
//! and exit codes.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use egressd_audit::export::{self, Format};
use egressd_audit::filter::{self, Filter, HostGlob};
use egressd_audit::reader::{self, Position, RawRecord, RawRecords, ReadError};
use egressd_audit::{suggest, summary};
use egressd_policy::Verdict;

/// The journal directory `egressd run` writes by default (`--audit-dir`).
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/egressd/audit";

/// Subcommands of `egressd audit`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Export records as JSON Lines (each journal line as is) or CSV.
    #[command(after_help = "Examples:\n  \
egressd audit export --since 2h --decision deny\n  \
egressd audit export --repository acme/web --format csv --output records.csv\n  \
egressd audit export --server https://egressd.example.com --token-file /etc/egressd/token --since 1d\n\n\
CSV columns, in order: v,id,ts,runner,repository,workflow,run_id,run_attempt,job,kind,\n\
decision,enforce_would,reason,rule,host,host_source,dst,src,pid,comm,exe,cgroup,container,\n\
bytes_up,bytes_down,duration_ms,detail,port,count,samples (see docs/audit.md).")]
    Export(ExportArgs),
    /// Print a Markdown table of the endpoints reached or refused.
    #[command(after_help = "Example:\n  \
egressd audit summary --repository acme/web --since 1h >> \"$GITHUB_STEP_SUMMARY\"")]
    Summary(SummaryArgs),
    /// Print a policy that would have allowed what the records show.
    #[command(after_help = "Example (after a run in audit mode):\n  \
egressd audit suggest --since 1d > policy.yaml && egressd check policy.yaml")]
    Suggest(SuggestArgs),
}

/// Where records are read from.
#[derive(clap::Args, Debug)]
pub struct Source {
    /// The journal directory (as given to `egressd run --audit-dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AUDIT_DIR)]
    pub dir: PathBuf,
}

/// Which records to look at.
#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// Only records at or after this time: RFC 3339 or a duration ago (90s, 30m, 2h, 7d, 2w).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<jiff::Timestamp>,
    /// Only records before this time: RFC 3339 or a duration ago.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<jiff::Timestamp>,
    /// Only records with this decision (what happened to the traffic).
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
    /// Only records whose host or destination IP matches this glob (`*.example.com`, `198.51.100.*`).
    #[arg(long, value_name = "GLOB")]
    pub host: Option<HostGlob>,
    /// Only records of jobs in this repository (`owner/name`).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repository: Option<String>,
}

/// `--decision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DecisionArg {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

/// `--format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum FormatArg {
    /// JSON Lines: each record's journal line, byte for byte.
    #[default]
    Jsonl,
    /// CSV with a header row.
    Csv,
}

/// Where `egressd audit export` reads: the local journal, or the policy
/// service's central store.
#[derive(clap::Args, Debug)]
pub struct ExportSource {
    /// The journal directory (as given to `egressd run --audit-dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AUDIT_DIR, conflicts_with = "server")]
    pub dir: PathBuf,
    /// Export from the policy service at this URL (`https://host:port`)
    /// instead of a local journal: the records of the token's org.
    #[arg(long, value_name = "URL", requires = "token_file")]
    pub server: Option<String>,
    /// The file holding the token for `--server` (one line).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
}

/// Options of `egressd audit export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Where records come from.
    #[command(flatten)]
    pub source: ExportSource,
    /// Which records.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
    pub format: FormatArg,
    /// Write to this file instead of stdout (replaced only once the export is complete).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Options of `egressd audit summary`.
#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// Where records come from.
    #[command(flatten)]
    pub source: Source,
    /// Which records.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Options of `egressd audit suggest`.
#[derive(clap::Args, Debug)]
pub struct SuggestArgs {
    /// Where records come from.
    #[command(flatten)]
    pub source: Source,
    /// Which records.
    #[command(flatten)]
    pub filter: FilterArgs,
}

fn parse_time(s: &str) -> Result<jiff::Timestamp, filter::FilterError> {
    filter::parse_time(s, jiff::Timestamp::now())
}

impl FilterArgs {
    fn to_filter(&self) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            decision: self.decision.map(|d| match d {
                DecisionArg::Allow => Verdict::Allow,
                DecisionArg::Deny => Verdict::Deny,
            }),
            host: self.host.clone(),
            repository: self.repository.clone(),
        }
    }
}

/// Entry point.
pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Export(a) => export(a),
        Command::Summary(a) => {
            let mut scan = Scan::open(&a.source.dir, a.filter.to_filter())?;
            let mut s = summary::Summary::default();
            for raw in scan.by_ref() {
                s.add(&raw.record);
            }
            scan.finish()?;
            print_stdout(&s.to_markdown())?;
            Ok(scan.exit_code())
        }
        Command::Suggest(a) => {
            let mut scan = Scan::open(&a.source.dir, a.filter.to_filter())?;
            let yaml = suggest::suggest(scan.by_ref().map(|raw| raw.record));
            scan.finish()?;
            print_stdout(&yaml)?;
            Ok(scan.exit_code())
        }
    }
}

fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    if let (Some(server), Some(token_file)) = (&a.source.server, &a.source.token_file) {
        return export_server(server, token_file, &a);
    }
    let format = match a.format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    let mut scan = Scan::open(&a.source.dir, a.filter.to_filter())?;
    let Some(path) = a.output else {
        let stdout = BufWriter::with_capacity(256 << 10, io::stdout().lock());
        return match write_all(&mut scan, format, stdout) {
            // The reader went away (`| head`): not an error of ours.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
            Err(e) => Err(e).context("cannot write the export to stdout"),
            Ok(()) => {
                scan.finish()?;
                Ok(scan.exit_code())
            }
        };
    };
    // Written beside the target and renamed when complete, so a failed export
    // never leaves a truncated file under the requested name.
    let partial = partial_path(&path);
    let file = File::create(&partial).with_context(|| {
        format!(
            "cannot create {}; check the directory exists and is writable",
            partial.display()
        )
    })?;
    let outcome = write_all(&mut scan, format, BufWriter::with_capacity(256 << 10, file))
        .with_context(|| format!("cannot write {}", partial.display()))
        .and_then(|()| scan.finish());
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    Ok(scan.exit_code())
}

/// How long connecting to the service, or waiting for its next bytes, may take.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// `export --server`: the service filters and formats; the bytes are written
/// as they arrive.
fn export_server(server: &str, token_file: &Path, a: &ExportArgs) -> anyhow::Result<ExitCode> {
    use egressd_service::client::ClientError;
    use egressd_service::{Client, ExportFilter, ExportFormat};

    let client = match Client::with_token_file(server, token_file, SERVER_TIMEOUT) {
        Ok(c) => c,
        Err(e @ ClientError::Url { .. }) => return Err(super::UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    let f = &a.filter;
    let filter = ExportFilter {
        since: f.since,
        until: f.until,
        decision: f.decision.map(|d| match d {
            DecisionArg::Allow => Verdict::Allow,
            DecisionArg::Deny => Verdict::Deny,
        }),
        host: f.host.as_ref().map(|g| g.as_str().to_owned()),
        repository: f.repository.clone(),
        format: match a.format {
            FormatArg::Jsonl => ExportFormat::Jsonl,
            FormatArg::Csv => ExportFormat::Csv,
        },
    };
    let explain = |e: ClientError| -> anyhow::Error {
        match e.status().map(|s| s.as_u16()) {
            Some(401) => anyhow::anyhow!(
                "the policy service at {server} did not accept the token in {}: check that the file holds a token listed in the service's --tokens file",
                token_file.display()
            ),
            Some(403) => anyhow::anyhow!(
                "the token in {} may not export audit records from {server}: use a token of the org whose records you want",
                token_file.display()
            ),
            _ if matches!(e, ClientError::Transport { .. }) => anyhow::Error::new(e).context(
                "check the --server URL (scheme, host and port), that `egressd serve` is running, and that this machine can reach it",
            ),
            _ => e.into(),
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let Some(path) = &a.output else {
        let mut stdout = tokio::io::stdout();
        return match rt.block_on(client.export(&filter, &mut stdout)) {
            // The reader went away (`| head`): not an error of ours.
            Err(ClientError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                Ok(ExitCode::SUCCESS)
            }
            Err(ClientError::Write(e)) => Err(e).context("cannot write the export to stdout"),
            Err(e) => Err(explain(e)),
            Ok(_) => Ok(ExitCode::SUCCESS),
        };
    };
    let partial = partial_path(path);
    let outcome = rt.block_on(async {
        let file = tokio::fs::File::create(&partial).await.with_context(|| {
            format!(
                "cannot create {}; check the directory exists and is writable",
                partial.display()
            )
        })?;
        let mut out = tokio::io::BufWriter::with_capacity(256 << 10, file);
        client
            .export(&filter, &mut out)
            .await
            .map_err(|e| match e {
                ClientError::Write(e) => {
                    anyhow::Error::new(e).context(format!("cannot write {}", partial.display()))
                }
                e => explain(e),
            })?;
        out.into_inner()
            .sync_all()
            .await
            .with_context(|| format!("cannot write {}", partial.display()))
    });
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

fn write_all<W: Write>(scan: &mut Scan, format: Format, out: W) -> io::Result<()> {
    let mut w = export::Writer::new(format, out)?;
    for raw in scan.by_ref() {
        w.write(&raw)?;
    }
    let mut out = w.finish()?;
    out.flush()
}

fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// Corrupt lines reported one by one before only counting them.
const MAX_CORRUPT_REPORTS: u64 = 10;

/// The matching records of a journal, in order. Corrupt lines are reported
/// on stderr and counted (they make the exit code 1); a read error stops the
/// scan and is returned by [`Scan::finish`]. Shows progress on stderr when
/// stderr is a terminal.
struct Scan {
    records: RawRecords,
    filter: Filter,
    read: u64,
    matched: u64,
    corrupt: u64,
    failed: Option<ReadError>,
    progress: Option<Progress>,
}

struct Progress {
    last: Instant,
    shown: bool,
}

impl Scan {
    fn open(dir: &Path, filter: Filter) -> anyhow::Result<Scan> {
        let records = reader::read_raw(dir, Position::default()).with_context(|| {
            format!(
                "cannot open the audit journal; pass the directory `egressd run --audit-dir` used with --dir (tried {})",
                dir.display()
            )
        })?;
        let progress = io::stderr().is_terminal().then(|| Progress {
            last: Instant::now(),
            shown: false,
        });
        Ok(Scan {
            records,
            filter,
            read: 0,
            matched: 0,
            corrupt: 0,
            failed: None,
            progress,
        })
    }

    fn tick(&mut self) {
        let Some(p) = &mut self.progress else { return };
        if self.read.is_multiple_of(4096) && p.last.elapsed() >= Duration::from_millis(500) {
            p.last = Instant::now();
            p.shown = true;
            eprint!("\r{} records read, {} matched", self.read, self.matched);
        }
    }

    /// After iterating: clear the progress line, return a read error if one
    /// stopped the scan, and say how many lines were skipped.
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &self.progress
            && p.shown
        {
            eprintln!("\r{} records read, {} matched", self.read, self.matched);
        }
        if let Some(e) = self.failed.take() {
            return Err(e).context("the export is incomplete");
        }
        if self.corrupt > 0 {
            eprintln!(
                "egressd: {} journal line(s) were not valid records and were skipped; the journal is damaged",
                self.corrupt
            );
        }
        Ok(())
    }

    fn exit_code(&self) -> ExitCode {
        if self.corrupt > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

impl Iterator for Scan {
    type Item = RawRecord;

    fn next(&mut self) -> Option<RawRecord> {
        loop {
            match self.records.next()? {
                Ok(raw) => {
                    self.read += 1;
                    self.tick();
                    if self.filter.matches(&raw.record) {
                        self.matched += 1;
                        return Some(raw);
                    }
                }
                Err(e @ ReadError::Corrupt { .. }) => {
                    self.corrupt += 1;
                    if self.corrupt <= MAX_CORRUPT_REPORTS {
                        eprintln!("egressd: warning: {e}");
                    }
                }
                Err(e) => {
                    self.failed = Some(e);
                    return None;
                }
            }
        }
    }
}
