//! systemd's readiness protocol (`sd_notify`), spoken directly: one datagram
//! to `$NOTIFY_SOCKET` when the gateway is serving.
//!
//! It says `READY=1` and `MAINPID=<this process>`. The second part is what
//! makes a zero-downtime upgrade under systemd work: the unit's reload
//! starts a new gateway with `--upgrade` and sends the old one SIGQUIT; the
//! new one, once it holds the listeners, tells systemd that it is now the
//! service's main process (the unit sets `NotifyAccess=all`), and the old
//! one drains and exits without systemd counting that as the service's end.

use std::os::unix::net::UnixDatagram;

/// The message for this process.
pub fn message(pid: u32) -> String {
    format!("READY=1\nMAINPID={pid}\nSTATUS=serving\n")
}

/// Sends the readiness message when systemd asked for one; without
/// `$NOTIFY_SOCKET` it does nothing. A failure is logged, never fatal: the
/// gateway serves either way, and systemd's start timeout reports it.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send(&path, &message(std::process::id())) {
        tracing::warn!(%error, "cannot notify systemd of readiness");
    }
}

fn send(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // A leading '@' names a socket in the abstract namespace.
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_this_process_as_the_main_one() {
        assert_eq!(message(4242), "READY=1\nMAINPID=4242\nSTATUS=serving\n");
    }

    #[test]
    fn a_datagram_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\n").expect("send");
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("portcullis-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let receiver = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(std::ffi::OsStr::new(&format!("@{name}")), "READY=1\n").expect("send");
        let n = receiver.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"READY=1\n");
    }
}
