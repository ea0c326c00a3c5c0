//! The end-to-end tests, one binary so that they link once and run side by side (each in its own
//! namespace, with its own AWS names, proxy and ports): `cargo test --test e2e -- <module>::`
//! runs one file's. The leader election tests run alone (`tests/leader.rs`): their leases of
//! two seconds must not wait for a busy API server.

mod adoption;
mod alerts;
mod aws_emulator;
mod chart;
mod crd;
mod data_flow;
mod delivery;
mod faults;
mod least_privilege;
mod management;
mod node;
mod operator;
mod ownership;
mod prometheus;
mod query;
mod quickstart;
mod quotas;
mod strict_bucket;
mod strict_catalog;
mod strict_delivery;
mod strict_streams;
mod tags;
mod team_identity;
