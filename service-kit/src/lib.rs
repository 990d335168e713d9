//! What every Portcullis service shares.
//!
//! The auth service and the backends all speak the same error envelope
//! (`{"error": {"code", "message"}}`), refuse malformed input the same way,
//! read the caller's identity from the one header the gateway sets, and run on
//! either SQLite or PostgreSQL. Keeping those rules here means a fix to one of
//! them reaches every service at once.

pub mod db;
pub mod error;
#[cfg(feature = "events")]
pub mod events;
pub mod extract;
pub mod identity;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod traces;

pub use contract::{supervision, telemetry};
pub use db::Db;
pub use error::ApiError;
pub use extract::{Json, Path, Query};
pub use identity::{UserId, UserRole};
