//! What operators see: the audit line of every request (`audit`), Prometheus metrics
//! (`metrics`), health, readiness and status routes (`health`), and logging (`telemetry`).

pub mod audit;
pub mod health;
pub mod metrics;
pub mod telemetry;
