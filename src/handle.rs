//! Handles that let other threads talk to a running server: [`Publisher`], [`Shutdown`] and
//! [`Reload`].
//!
//! Both are a channel into the event loop plus a [`mio::Waker`] to wake it, so the loop stays the only
//! owner of the broadcast log and the sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::broadcast::EventId;
use crate::error::Error;
use crate::event::{self, Draft};

/// An event to publish through a [`Publisher`]: data, the topics it belongs to, and an optional type.
///
/// A builder: [`Publisher::publish`] checks it against the contract's rules (the same ones an HTTP
/// publish meets) and refuses a bad one. The id is not part of it: ids are assigned by the server
/// when the event enters the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    topics: Vec<String>,
    event_type: Option<String>,
    data: String,
    retry: Option<Duration>,
}

impl Event {
    /// An event carrying `data`; line breaks in it become separate `data:` lines on the wire.
    pub fn new(data: impl Into<String>) -> Self {
        Event { topics: Vec::new(), event_type: None, data: data.into(), retry: None }
    }

    /// Adds a topic the event belongs to; an event needs at least one.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Sets the `event:` field, which selects the listener an `EventSource` dispatches it to.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the `retry:` field sent with this event, changing the client's reconnection delay.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Checks the event against the contract's rules ([`Draft::validate`]), so a bad one is refused
    /// in the caller's thread and the event loop only ever sees a valid one.
    pub(crate) fn into_valid(self, max_body: usize) -> Result<event::Event, Error> {
        let draft = Draft {
            topics: self.topics,
            event_type: self.event_type,
            retry_ms: self.retry.map(|r| r.as_millis() as u64),
            data: self.data.into_bytes(),
            ..Draft::default()
        };
        draft.validate(max_body).map_err(|e| Error::invalid_event(e.to_string()))
    }
}

/// A message from a handle to the event loop.
pub(crate) enum Command {
    Publish(event::Event, mpsc::SyncSender<Result<EventId, Error>>),
    /// A TLS configuration read again from the files: new handshakes start from it.
    #[cfg(feature = "tls")]
    Tls(std::sync::Arc<rustls::ServerConfig>),
}

/// The sending half shared by every handle of one server.
#[derive(Clone)]
pub(crate) struct Mailbox {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) waker: Arc<mio::Waker>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) max_body: usize,
}

impl Mailbox {
    fn wake(&self) -> Result<(), Error> {
        self.waker.wake().map_err(|e| Error::io("waking the ssed event loop", e))
    }
}

/// Publishes events into a server from any thread; cheap to clone.
///
/// Each call waits until the event loop has stored the event in its history and returns the id it was
/// given, so the caller knows the event will reach every current subscriber of its topics.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) mailbox: Mailbox,
}

impl Publisher {
    /// Stores `event` in the history, starts its delivery, and returns its id.
    ///
    /// Fails with [`ErrorKind::InvalidEvent`](crate::ErrorKind::InvalidEvent) for a bad topic, type or
    /// size, and with [`ErrorKind::Stopped`](crate::ErrorKind::Stopped) once the server has stopped.
    pub fn publish(&self, event: Event) -> Result<EventId, Error> {
        let event = event.into_valid(self.mailbox.max_body)?;
        if self.mailbox.shutdown.load(Ordering::Acquire) {
            return Err(Error::stopped());
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.mailbox.commands.send(Command::Publish(event, reply)).map_err(|_| Error::stopped())?;
        self.mailbox.wake()?;
        answer.recv().map_err(|_| Error::stopped())?
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// Asks a running server to stop; cheap to clone, usable from any thread or a signal handler thread.
///
/// The server stops accepting, ends every stream with a clean end of stream so clients reconnect
/// elsewhere, flushes what it has buffered within its shutdown timeout, and returns from `run()`.
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) mailbox: Mailbox,
}

impl Shutdown {
    /// Starts a graceful shutdown; calling it again, or after the server stopped, does nothing.
    pub fn shutdown(&self) {
        self.mailbox.shutdown.store(true, Ordering::Release);
        // A failed wake means the loop is gone already, which is what was asked for.
        let _ = self.mailbox.wake();
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").finish_non_exhaustive()
    }
}

/// Reads the TLS certificate and key again (what `SIGHUP` does in the `ssed` binary); cheap to
/// clone, usable from any thread.
///
/// The files are read and checked on the caller's thread, so the event loop never waits on the
/// disk: new handshakes use the new certificate, connections already open keep theirs, and a file
/// that does not load changes nothing.
#[derive(Clone)]
pub struct Reload {
    // Without TLS there is nothing to send the loop.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) mailbox: Mailbox,
    /// The certificate and key files, when the server serves TLS.
    pub(crate) tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Reload {
    /// Reloads the certificate and key: `Ok(false)` when the server serves no TLS (nothing to do),
    /// `Ok(true)` once the loop has the new ones, and the reason when a file does not load (the old
    /// certificate stays in use).
    pub fn reload(&self) -> Result<bool, Error> {
        let Some((_cert, _key)) = &self.tls else { return Ok(false) };
        #[cfg(feature = "tls")]
        {
            let config = crate::tls::load(_cert, _key, std::time::SystemTime::now())?;
            if self.mailbox.shutdown.load(Ordering::Acquire) {
                return Err(Error::stopped());
            }
            self.mailbox.commands.send(Command::Tls(config)).map_err(|_| Error::stopped())?;
            self.mailbox.wake()?;
        }
        Ok(true)
    }
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").field("tls", &self.tls).finish_non_exhaustive()
    }
}
