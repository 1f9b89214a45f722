//! The machine's own share of a workload's wall time, from `/proc/stat`:
//! CPU time the hypervisor took for other guests ("steal") and time the CPUs
//! sat idle. On shared VMs a stolen few percent move every ratio of a table,
//! so each table says how much was stolen while it ran, and the harness warns
//! when it was enough to read the table with care.

/// Above this share of stolen CPU time a table is flagged.
pub const STEAL_WARN: f64 = 0.02;

/// Cumulative CPU times of all CPUs, in clock ticks (`/proc/stat`'s `cpu` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every column added up.
    pub total: u64,
    /// `idle` and `iowait`.
    pub idle: u64,
    /// `steal`.
    pub steal: u64,
}

impl CpuTimes {
    /// Now; `None` where `/proc/stat` cannot be read or parsed.
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The aggregate `cpu` line of a `/proc/stat` text.
pub fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let cols: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest
    // time is already counted in user and nice.
    if cols.len() < 8 {
        return None;
    }
    Some(CpuTimes {
        total: cols[..8].iter().sum(),
        idle: cols[3] + cols[4],
        steal: cols[7],
    })
}

/// Shares of the CPU time between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// Taken by the hypervisor.
    pub steal: f64,
    /// Idle.
    pub idle: f64,
}

impl Shares {
    /// Between `before` and `after`; `None` when no time passed.
    pub fn between(before: CpuTimes, after: CpuTimes) -> Option<Shares> {
        let total = after.total.checked_sub(before.total).filter(|&t| t > 0)? as f64;
        let part = |a: u64, b: u64| a.saturating_sub(b) as f64 / total;
        Some(Shares {
            steal: part(after.steal, before.steal),
            idle: part(after.idle, before.idle),
        })
    }

    /// From `before` (a [`CpuTimes::now`]) until now.
    pub fn since(before: Option<CpuTimes>) -> Option<Shares> {
        Shares::between(before?, CpuTimes::now()?)
    }

    /// Whether enough was stolen to read the ratios with care.
    pub fn disturbed(&self) -> bool {
        self.steal > STEAL_WARN
    }

    /// The table note.
    pub fn note(&self) -> String {
        let mut s = format!(
            "machine during this workload: {:.1}% of the CPU time taken by the hypervisor (steal), {:.0}% idle",
            self.steal * 100.0,
            self.idle * 100.0
        );
        if self.disturbed() {
            s.push_str(&format!(
                "; **more than {:.0}% stolen: other guests shared these CPUs, read the ratios with care**",
                STEAL_WARN * 100.0
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  6990777 52438 2101370 3316098 41901 0 462301 75646 0 0\n\
                        cpu0 3495388 26219 1050685 1658049 20950 0 231150 37823 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn the_aggregate_line_is_read() {
        let t = parse(STAT).unwrap();
        assert_eq!(t.steal, 75646);
        assert_eq!(t.idle, 3316098 + 41901);
        assert_eq!(
            t.total,
            6990777 + 52438 + 2101370 + 3316098 + 41901 + 462301 + 75646
        );
        assert_eq!(parse("cpu0 1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn shares_are_of_the_time_between_samples() {
        let before = CpuTimes {
            total: 1000,
            idle: 100,
            steal: 10,
        };
        let after = CpuTimes {
            total: 2000,
            idle: 150,
            steal: 60,
        };
        let s = Shares::between(before, after).unwrap();
        assert!((s.steal - 0.05).abs() < 1e-9, "{s:?}");
        assert!((s.idle - 0.05).abs() < 1e-9, "{s:?}");
        assert!(s.disturbed());
        assert!(s.note().contains("5.0% of the CPU time"), "{}", s.note());
        assert!(s.note().contains("read the ratios with care"));
        let calm = Shares::between(
            before,
            CpuTimes {
                total: 2000,
                idle: 500,
                steal: 15,
            },
        )
        .unwrap();
        assert!(!calm.disturbed());
        assert!(!calm.note().contains("care"), "{}", calm.note());
        assert_eq!(Shares::between(before, before), None);
    }
}
