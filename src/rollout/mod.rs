//! The gated rollout: a new deployment carried from 0% to 100% in planned steps, judged against
//! the baseline on live traffic at every step, and rolled back by itself when it is worse.
//!
//! `plan` reads what the user wrote, `judge` is the statistics (pure), `edit` changes the
//! traffic in the endpoint file and nothing else, `source` reads the counts from the gateways or
//! from Prometheus, and `controller` runs the steps and keeps their state on disk.

pub mod controller;
pub mod edit;
pub mod judge;
pub mod plan;
pub mod source;
pub mod state;
pub mod step;
