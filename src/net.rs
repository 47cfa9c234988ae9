//! Socket setup with socket2 and the one place where I/O results are classified.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// Listen backlog requested; the kernel caps it at `net.core.somaxconn` (4096 by default since 5.4).
/// A burst of reconnecting clients after a restart must not be refused for want of queue space.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Binds a non-blocking listener with `SO_REUSEADDR` (so a restart does not wait out `TIME_WAIT`) and a
/// large backlog.
///
/// With `reuse_port`, `SO_REUSEPORT` lets other processes bind the same address, and the kernel
/// spreads new connections over all of them (cluster mode, one process per core).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, Error> {
    let context = || format!("binding {addr}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::io(context(), e))?;
    socket.set_reuse_address(true).map_err(|e| Error::io(context(), e))?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(|e| Error::io(format!("setting SO_REUSEPORT on {addr}"), e))?;
    }
    if addr.is_ipv6() {
        // Keep [::] dual-stack whatever the host's default, so one flag serves both families.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(|e| Error::io(context(), e))?;
    socket.listen(LISTEN_BACKLOG).map_err(|e| Error::io(context(), e))?;
    socket.set_nonblocking(true).map_err(|e| Error::io(context(), e))?;
    Ok(socket.into())
}

/// Prepares an accepted stream: no Nagle delay, since every write is a whole frame someone is
/// waiting for.
pub fn tune_stream(stream: &mio::net::TcpStream) {
    // A failure here only costs latency; the connection is still served.
    let _ = stream.set_nodelay(true);
}

/// What a read or write came to, classified once so every caller treats resets and `WouldBlock` alike.
#[derive(Debug)]
pub enum Outcome {
    /// Bytes moved.
    Done(usize),
    /// The socket has no room or no data now; wait for readiness.
    WouldBlock,
    /// The peer closed or reset the connection: ordinary, not logged above debug.
    Closed,
    /// Anything else: logged.
    Failed(io::Error),
}

/// Classifies the result of a read (`Ok(0)` is the peer's end of stream) or a write.
pub fn classify(result: io::Result<usize>, is_read: bool) -> Outcome {
    match result {
        Ok(0) if is_read => Outcome::Closed,
        Ok(n) => Outcome::Done(n),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock => Outcome::WouldBlock,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Outcome::Closed,
            _ => Outcome::Failed(e),
        },
    }
}

/// Whether an `accept` error means the process or system is out of descriptors (or memory for them):
/// the listener must pause instead of spinning on a backlog it cannot drain.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The soft limit on open descriptors, or `None` if it cannot be read.
pub fn descriptor_limit() -> Option<u64> {
    // rlim_t is u64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    file_limit().ok().map(|limit| limit.rlim_cur as u64)
}

/// Raises the soft limit on open descriptors to the hard limit and returns `(before, after)`.
///
/// Each connection is a descriptor, and the default soft limit (often 1024) is far below what one
/// ssed holds; systemd's `LimitNOFILE=` or the shell's `ulimit -Hn` sets the hard limit.
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let mut limit = file_limit()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct passed, which lives across the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // rlim_t is u64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    Ok((before as u64, limit.rlim_cur as u64))
}

/// The soft and hard limits on open descriptors (`getrlimit(RLIMIT_NOFILE)`).
fn file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct we pass; the pointer is valid for its lifetime.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_io_results() {
        assert!(matches!(classify(Ok(0), true), Outcome::Closed));
        assert!(matches!(classify(Ok(0), false), Outcome::Done(0)));
        assert!(matches!(classify(Err(io::ErrorKind::WouldBlock.into()), true), Outcome::WouldBlock));
        assert!(matches!(classify(Err(io::ErrorKind::ConnectionReset.into()), false), Outcome::Closed));
        assert!(matches!(classify(Err(io::ErrorKind::BrokenPipe.into()), false), Outcome::Closed));
        assert!(matches!(classify(Err(io::ErrorKind::PermissionDenied.into()), false), Outcome::Failed(_)));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }

    /// Lowers this test process's soft limit by one with util-linux `prlimit`, then raises it back.
    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn raises_the_soft_descriptor_limit_to_the_hard_one() {
        let hard = file_limit().expect("the limit can be read").rlim_max as u64;
        let lowered = hard - 1;
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), &format!("--nofile={lowered}:{hard}")])
            .status()
            .expect("prlimit runs");
        assert!(status.success(), "prlimit failed");
        assert_eq!(descriptor_limit(), Some(lowered));
        assert_eq!(raise_descriptor_limit().expect("the limit can be raised"), (lowered, hard));
        assert_eq!(descriptor_limit(), Some(hard));
    }

    #[test]
    fn binds_loopback_with_port_zero() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
