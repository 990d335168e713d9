//! Bounds on the file as a whole. Each is far above what a real gateway
//! needs and low enough that checking or reloading a file at the bound
//! stays well under a second and a few hundred megabytes.

/// Size of the routes file.
pub const FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Entries under `routes`.
pub const ROUTES: usize = 100_000;
/// Entries under `upstreams`.
pub const UPSTREAMS: usize = 10_000;
/// Servers of one upstream.
pub const SERVERS: usize = 1_000;
/// Roles of one route.
pub const ROLES: usize = 64;
/// Bytes of one role name.
pub const ROLE_BYTES: usize = 128;
/// Entries under `server.trusted_proxies`.
pub const TRUSTED_PROXIES: usize = 1_024;
/// Shadowing warnings reported one by one; the rest are counted.
pub const WARNINGS: usize = 100;
/// Hosts of one route.
pub const HOSTS: usize = 256;
/// Entries under `tls.certificates`.
pub const CERTIFICATES: usize = 1_000;
