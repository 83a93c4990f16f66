//! Glueberry's test and benchmark harness.
//!
//! **Not implemented yet.** It will hold the deterministic in-memory network that the transport
//! core's scenario tests run on, the fault-injecting proxy, and the comparison peers (plain TCP,
//! rustls, rust-libp2p) that `glueberry-perf compare` measures side by side.
