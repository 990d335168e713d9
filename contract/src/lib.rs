//! The wire contract between the gateway and the services behind it.
//!
//! The gateway and every service agree on a few things that must never
//! drift apart: the JSON error envelope, the names of the headers the
//! gateway sets, the one spelling of a user id, and how a binary logs and
//! leaves with its supervisor. They are written once, here, in a crate small
//! enough that the gateway links it without any service's web framework or
//! database driver.

pub mod envelope;
pub mod identity;
pub mod supervision;
pub mod telemetry;
