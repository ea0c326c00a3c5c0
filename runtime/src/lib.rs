//! What the operator and aggregator binaries share as processes: log setup, the shutdown signal,
//! the content type of their metrics, and the AWS SDK settings (one TLS stack, the default credential chain, emulator endpoints).

pub mod metrics;
pub mod process;
pub mod sdk;
