//! Markdown tables and the statistics in them (medians of repetitions with
//! their min-max, ratios).

/// One Markdown table with its heading and notes.
#[derive(Debug, Default)]
pub struct Table {
    /// Heading (`### W1 ...`).
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
    /// Whether a run of egressd or a reference failed (unexpected errors, missing
    /// audit records); a peer's errors are shown in bold in its row instead.
    pub failed: bool,
}

impl Table {
    /// A new table.
    pub fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Renders the table as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {}\n\n| {} |\n|{}\n",
            self.title,
            self.header.join(" | "),
            "---|".repeat(self.header.len())
        );
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s.push('\n');
        s
    }
}

/// Median of a non-empty slice (0 for an empty one).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `median (min-max)` with `digits` decimals.
pub fn spread(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.digits$} ({:.digits$}-{:.digits$})", median(v), min, max)
}

/// `a / b` as `0.93x`, or `-`.
pub fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_spread_and_ratio() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[3.0, 1.0, 2.0], 0), "2 (1-3)");
        assert_eq!(ratio(1.0, Some(2.0)), "0.50x");
        assert_eq!(ratio(1.0, None), "-");
    }
}
