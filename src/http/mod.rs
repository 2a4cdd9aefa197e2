//! The HTTP server.

pub mod metrics;

pub use metrics::Metrics;
