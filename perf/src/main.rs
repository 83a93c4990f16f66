//! `glueberry-perf`: the iperf-style benchmark suite. Not implemented yet: it needs the engine.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "glueberry-perf is not implemented yet: it needs the io_uring engine. \
         The secure channel's micro-benchmarks run with `cargo bench -p glueberry-crypto`."
    );
    ExitCode::FAILURE
}
