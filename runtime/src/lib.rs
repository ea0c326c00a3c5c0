//! What the operator and aggregator binaries share as processes: log setup, the shutdown signal,
//! and the AWS SDK settings (one TLS stack, the default credential chain, emulator endpoints).

pub mod process;
pub mod sdk;
