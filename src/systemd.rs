//! Living under systemd: an inherited listening socket, and the notification protocol (`sd_notify`).
//!
//! Both are small enough to do by hand over std: socket activation is "descriptor 3 when
//! `LISTEN_PID` is ours", and notification is one datagram per message to `$NOTIFY_SOCKET`
//! (`sd_notify(3)`, `sd_listen_fds(3)`). Nothing here runs unless the variables are set.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::error::Error;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Takes the listening socket systemd passed, if the variables say it was passed to this process.
///
/// With several sockets, the one named `ssed` in `LISTEN_FDNAMES` is used (the unit's
/// `FileDescriptorName=`), else the first. The variables are removed so a child process does not
/// mistake the sockets for its own.
pub fn take_listener() -> Result<Option<std::net::TcpListener>, Error> {
    Ok(take_listeners()?.map(|inherited| inherited.main))
}

/// The sockets systemd passed: the main one, and one for TLS.
#[derive(Debug)]
pub struct Inherited {
    /// The socket named `ssed`, else the first one not named `ssed-tls`.
    pub main: std::net::TcpListener,
    /// The socket named `ssed-tls` (a second `ListenStream=` socket unit with
    /// `FileDescriptorName=ssed-tls`), which serves TLS beside the main one.
    pub tls: Option<std::net::TcpListener>,
}

/// Takes the sockets systemd passed, if the variables say they were passed to this process: the
/// main one as [`take_listener`] picks it, and the one named `ssed-tls`, if any. The variables are
/// removed so a child process does not mistake the sockets for its own.
pub fn take_listeners() -> Result<Option<Inherited>, Error> {
    let Ok(pid) = std::env::var("LISTEN_PID") else { return Ok(None) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| Error::config("LISTEN_PID is set but LISTEN_FDS is not a number"))?;
    if count < 1 {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let tls = names.iter().position(|n| *n == "ssed-tls").map(|i| i as i32);
    let main = match names.iter().position(|n| *n == "ssed") {
        Some(index) => index as i32,
        None => (0..count).find(|i| Some(*i) != tls).unwrap_or(0),
    };
    if main >= count || tls.is_some_and(|i| i >= count) {
        return Err(Error::config("LISTEN_FDNAMES names more sockets than LISTEN_FDS"));
    }
    if tls == Some(main) {
        return Err(Error::config(
            "systemd passed only the socket named ssed-tls; ssed needs a main socket too",
        ));
    }
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let main = adopt_listener(LISTEN_FDS_START + main)?;
    let tls = tls.map(|i| adopt_listener(LISTEN_FDS_START + i)).transpose()?;
    Ok(Some(Inherited { main, tls }))
}

/// Wraps an inherited descriptor after checking it really is a listening stream socket.
fn adopt_listener(fd: i32) -> Result<std::net::TcpListener, Error> {
    use std::os::fd::FromRawFd;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`, which lives across the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::io(format!("inspecting inherited descriptor {fd}"), io::Error::last_os_error()));
    }
    if listening == 0 {
        return Err(Error::config(format!("inherited descriptor {fd} is not a listening socket")));
    }
    // SAFETY: the one place ssed adopts a descriptor it did not open: systemd passed `fd` to this
    // process (LISTEN_PID matched), it is an open listening socket (checked above), and the
    // variables were removed so nothing else in this process will adopt it a second time.
    #[allow(unsafe_code)]
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    Ok(listener)
}

/// Sends `sd_notify` messages to the service manager: readiness, status, watchdog pings, stopping.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: NotifyAddress,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum NotifyAddress {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), with the
    /// watchdog interval from `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or ours.
    pub fn from_env() -> Result<Option<Notifier>, Error> {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
        let target = target.to_string_lossy().into_owned();
        let address = match target.strip_prefix('@') {
            Some(name) => NotifyAddress::Abstract(name.as_bytes().to_vec()),
            None if target.starts_with('/') => NotifyAddress::Path(target.into()),
            None => {
                return Err(Error::config(format!(
                    "NOTIFY_SOCKET {target:?} is neither a path nor @abstract"
                )))
            }
        };
        let socket = UnixDatagram::unbound().map_err(|e| Error::io("creating the notify socket", e))?;
        let watchdog_ours = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && watchdog_ours)
            .map(Duration::from_micros);
        Ok(Some(Notifier { socket, address, watchdog }))
    }

    /// How often the loop must ping: half the watchdog interval, as `sd_watchdog_enabled(3)` advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one message, e.g. `READY=1` or `STATUS=...`; newline-separated assignments.
    pub fn notify(&self, message: &str) -> io::Result<()> {
        match &self.address {
            NotifyAddress::Path(path) => self.socket.send_to(message.as_bytes(), path).map(|_| ()),
            NotifyAddress::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(message.as_bytes(), &address).map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ssed-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let receiver = UnixDatagram::bind(&dir).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            address: NotifyAddress::Path(dir.clone()),
            watchdog: Some(Duration::from_secs(10)),
        };
        notifier.notify("READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ssed-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            address: NotifyAddress::Abstract(name.into_bytes()),
            watchdog: None,
        };
        notifier.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
