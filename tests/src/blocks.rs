//! Exclusive holds on blocks of test addresses, across processes.

/// An exclusive hold on one block of test addresses, across processes: two
/// test runs on one machine (two checkouts, or CI beside a developer, or the
/// benchmark harness) would otherwise put the same addresses on two links
/// and route each other's packets. Released when dropped.
#[derive(Debug)]
pub struct BlockLock(#[expect(dead_code, reason = "held for its lock")] std::fs::File);

/// Waits for the block `name` (a lock file in the temporary directory).
pub fn lock_block(name: &str) -> BlockLock {
    let path = std::env::temp_dir().join(format!("egressd-it-{name}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    BlockLock(file)
}
