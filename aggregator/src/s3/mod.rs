//! What the aggregator keeps in the pipeline's bucket: the checkpoint (also the lease that makes
//! one copy the writer), the dead letters, and the Parquet files of the direct sink.

pub mod bucket;
pub mod checkpoint;
pub mod dead_letter;
pub mod parquet_files;
