//! Glueberry's test and benchmark harness.
//!
//! [`sim`], the deterministic in-memory network the transport core's scenario tests run on, and
//! [`proxy`], the fault-injecting TCP proxy the engine's chaos tests put between real nodes (also
//! a command: `cargo run -p glueberry-bench-harness --bin fault-proxy -- --help`). The
//! comparison peers live in `perf/`.

pub mod proxy;
pub mod sim;
