//! `routes.yaml`: the schema, its parsing, and every check that can be made
//! before anything starts. Used by the gateway and by the `stack` command;
//! nothing here knows about Pingora or serving requests.
//!
//! Parsing is strict: unknown keys are errors, and values are parsed into
//! newtypes (durations, sizes, prefixes, addresses) while deserialising, so
//! a mistake is reported with its key path and line. Checks that need the
//! whole file (a route naming an undefined upstream, two routes claiming the
//! same prefix and method) run afterwards, and every problem is reported in
//! one run.
//!
//! - [`yaml_lines`]: the only read of the file, bounded before serde sees it.
//! - [`yaml_de`]: serde over the events that read kept.
//! - [`schema`]: the sections; [`values`]: the validated value types.
//! - `check` and [`overlap`]: the checks after parsing, and the rules on
//!   overlapping routes.

pub mod answers;
pub mod bounds;
mod check;
pub mod compression;
pub mod cors;
mod errors;
pub mod header_rules;
pub mod hosts;
pub mod jwks;
mod load;
pub mod overlap;
pub mod pools;
pub mod schema;
pub mod traces;
pub mod values;
pub mod yaml_de;
pub mod yaml_lines;

pub use errors::{ConfigError, ConfigErrors};
pub use hosts::{HostPattern, normal_host};
pub use overlap::implied_methods;
pub use schema::*;
pub use values::*;

#[cfg(test)]
mod tests;
