//! Switchyard: one scoring endpoint in front of several deployments of a model.

pub mod config;
