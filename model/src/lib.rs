//! The pipeline's data model, shared by the operator, the aggregator and the tests: metric events
//! in, windowed aggregates out, and the rules of windowing. No Kubernetes and no I/O, so the
//! aggregator links none of the operator's dependencies.

pub mod aggregation;
pub mod duration;
pub mod event;
pub mod report;
pub mod stable_hash;
