//! net-exporter: network telemetry for a Kubernetes node and every Pod on it.
//!
//! The data flow reads top to bottom in the module list:
//! `inventory` finds the network namespaces (targets), `sources` reads the kernel for one
//! target, `probes` turn what was read into series, `collector` runs one collection over all
//! targets, `telemetry` records it into OpenTelemetry and exports it (Prometheus pull, OTLP push),
//! `http` serves it. Beside it, `checks` look for problems in the node's network
//! configuration and `events` report them (stdout, OTLP logs, Loki).

pub mod checks;
pub mod collector;
pub mod component;
pub mod config;
pub mod events;
pub mod http;
pub mod inventory;
pub mod probes;
pub mod sources;
pub mod telemetry;
