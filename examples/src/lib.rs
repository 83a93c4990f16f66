//! Runnable examples; see the `examples` targets of this package.
