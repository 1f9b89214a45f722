//! Problems found in a policy file, each pinned to `file:line:col`. A
//! `Diagnostic` is a value; `Diagnostics` is the error `Policy::parse` returns
//! with every error of the file at once.

use std::fmt;

/// How bad a problem is: an error rejects the policy, a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The policy is rejected.
    Error,
    /// The policy loads; the person should still look.
    Warning,
}

/// One problem at one place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to `Policy::parse`.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub col: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in a policy file (never empty when returned by
/// `Policy::parse`). `Display` prints one diagnostic per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A 1-based position in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Pos {
    pub(crate) line: u32,
    pub(crate) col: u32,
}

/// Collects diagnostics while walking a file; sorted by position at the end.
#[derive(Debug)]
pub(crate) struct Sink {
    file: String,
    found: Vec<Diagnostic>,
}

impl Sink {
    pub(crate) fn new(file: &str) -> Self {
        Sink {
            file: file.to_owned(),
            found: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.push(at, Severity::Error, message.into());
    }

    pub(crate) fn warn(&mut self, at: Pos, message: impl Into<String>) {
        self.push(at, Severity::Warning, message.into());
    }

    fn push(&mut self, at: Pos, severity: Severity, message: String) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            line: at.line,
            col: at.col,
            severity,
            message,
        });
    }

    /// How many errors so far; comparing two counts tells whether a step
    /// reported something.
    pub(crate) fn error_count(&self) -> usize {
        self.found
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.found.iter().any(|d| d.severity == Severity::Error)
    }

    /// Split into (errors, warnings), each in file order.
    pub(crate) fn finish(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        self.found.sort_by_key(|d| (d.line, d.col));
        self.found
            .into_iter()
            .partition(|d| d.severity == Severity::Error)
    }
}
