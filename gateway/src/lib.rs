//! Portcullis gateway.
//!
//! Plain code decides; [`edge`] acts. Everything that touches the proxy
//! engine lives in [`edge`] (a test fails when any other file names the
//! engine's crate), and
//! every decision is a function of plain values with unit tests:
//!
//! - [`request`]: what happens to a request, in order ([`request::front`],
//!   [`request::admit`], [`request::forward`]); [`response`]: what happens
//!   to an answer, and which refusal answers a failure; [`refusal`]: every
//!   answer the gateway writes itself.
//! - [`auth`]: credentials, the verdict cache, the verifier.
//! - [`path`] normalises request paths, [`router`] picks a route,
//!   [`limits`] keeps rate-limit buckets, [`connections`] bounds open
//!   connections and tunnels, [`headers`] holds header rules.
//! - [`trace`]: request traces (W3C trace context, sampling, spans).
//! - [`revocations`] follows revocations; [`settings`] layers the
//!   environment and flags over the file; the state one read of
//!   `routes.yaml` builds (routes, pools, verifier, certificate) is the
//!   edge's `Generation`.
//! - [`config`] is the `gateway-config` crate (the routes file).

pub use gateway_config as config;

pub mod auth;
pub mod compression;
pub mod connections;
pub mod cors;
pub mod edge;
pub mod edit;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod outliers;
pub mod path;
pub mod pool_load;
pub mod refusal;
pub mod request;
pub mod response;
pub mod retries;
pub mod revocations;
pub mod router;
pub mod rules;
pub mod settings;
pub mod shared_limits;
pub mod status;
pub mod trace;
