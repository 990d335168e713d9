//! The gateway as users, operators and attackers meet it: real gateway and
//! auth service processes on ephemeral ports, and a recording upstream.
//! One test binary; one module per subject.

mod auth;
mod hardening;
mod jwks;
mod lifecycle;
mod limits;
mod pools;
mod revocations;
mod sites;
mod status;
mod support;
mod tls;
mod upstreams;
mod websockets;
