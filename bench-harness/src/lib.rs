//! Glueberry's test and benchmark harness.
//!
//! Today: [`sim`], the deterministic in-memory network the transport core's scenario tests run
//! on. Later: the fault-injecting TCP proxy and the comparison peers (plain TCP, rustls,
//! rust-libp2p) that `glueberry-perf compare` measures side by side.

pub mod sim;
