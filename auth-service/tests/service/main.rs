//! The auth service over HTTP, in process and as a binary: one test
//! binary, one module per subject.

mod api;
mod binary;
mod revocations;
mod support;
