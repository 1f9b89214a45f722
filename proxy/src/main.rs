//! The `egressd` binary: parse the command line, hand over to `cmd`.

fn main() -> std::process::ExitCode {
    egressd::cmd::main()
}
