//! Leaving with the supervisor.
//!
//! The `stack` command starts every service as its child and stops them on
//! Ctrl-C or SIGTERM. If the supervisor itself is killed outright (SIGKILL,
//! the OOM killer), nobody sends that SIGTERM, and the children would keep
//! their ports until someone finds them. A supervisor therefore names itself
//! in `PORTCULLIS_PARENT_PID`; a service started that way watches its parent
//! and, once it has been re-parented, sends itself SIGTERM, so it shuts down
//! through its ordinary, graceful path.

use std::time::Duration;

/// The variable a supervisor sets to its own process id.
pub const PARENT_PID: &str = "PORTCULLIS_PARENT_PID";

/// How often the parent is looked at: cheap (one `getppid`), and fast enough
/// that a restarted stack rarely finds the old ports still taken.
const POLL: Duration = Duration::from_millis(200);

/// Starts the watch when [`PARENT_PID`] is set; does nothing otherwise.
pub fn follow_parent() {
    let Some(expected) = std::env::var(PARENT_PID)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("follow-parent".into())
        .spawn(move || {
            while std::os::unix::process::parent_id() == expected {
                std::thread::sleep(POLL);
            }
            // Signal first: the supervisor held the other end of stdout and
            // stderr, so this log line may well go nowhere.
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
            tracing::warn!(
                parent = expected,
                "the supervising process is gone; shutting down"
            );
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch the supervising process");
    }
}
