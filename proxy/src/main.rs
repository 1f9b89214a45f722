//! The `egressd` binary: parse the command line, hand over to `cmd`.

/// mimalloc instead of glibc's malloc: the data plane allocates small,
/// short-lived buffers and records on every connection and query from
/// several threads, which glibc's arenas serve at a measurable cost (W4's
/// profile: about a tenth of egressd's CPU in malloc and free).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    egressd::cmd::main()
}
