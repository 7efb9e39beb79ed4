//! The service manager's notification socket (`sd_notify(3)`): one
//! datagram per state change on the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

use std::io;
use std::os::unix::net::UnixDatagram;

/// Where notifications go, read once from the environment.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl NotifySocket {
    /// The socket `$NOTIFY_SOCKET` names, or None when it is unset or
    /// empty (not run by a service manager that listens).
    pub fn from_env() -> io::Result<Option<NotifySocket>> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET").filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&name)?,
        };
        let sock = UnixDatagram::unbound()?;
        Ok(Some(NotifySocket { sock, addr }))
    }

    /// The socket bound at `path` (a service manager's, or a test's).
    pub fn at(path: &std::path::Path) -> io::Result<NotifySocket> {
        Ok(NotifySocket {
            sock: UnixDatagram::unbound()?,
            addr: std::os::unix::net::SocketAddr::from_pathname(path)?,
        })
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, ...; several
    /// assignments separated by newlines).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.sock.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}
