//! The crate's public error type.

use std::fmt;
use std::io;

use crate::event::PublishError;

/// Everything that can go wrong when configuring, starting or using an ssed server.
///
/// The message names the step that failed ("binding 127.0.0.1:8080: Address already in use"), so a
/// program embedding ssed can print it as it is; `source()` gives the underlying cause when there is one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<io::Error>,
}

/// The broad class of an [`Error`], for callers that react differently to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is out of range or contradicts another one.
    Config,
    /// The operating system refused a step of setting up or running the server.
    Io,
    /// An event handed to a [`Publisher`](crate::Publisher) was refused (bad topic, type or size).
    InvalidEvent,
    /// The server has stopped, so the request could not be carried out.
    Stopped,
    /// The server could not store the event (the durable history's disk is full or failing); the
    /// same event may succeed later.
    Unavailable,
}

impl Error {
    pub(crate) fn config(context: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Config, context: context.into(), source: None }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error { kind: ErrorKind::Io, context: context.into(), source: Some(source) }
    }

    pub(crate) fn invalid_event(context: impl Into<String>) -> Self {
        Error { kind: ErrorKind::InvalidEvent, context: context.into(), source: None }
    }

    pub(crate) fn unavailable(context: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Unavailable, context: context.into(), source: None }
    }

    pub(crate) fn stopped() -> Self {
        Error { kind: ErrorKind::Stopped, context: "the ssed server has stopped".into(), source: None }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.context, source),
            None => f.write_str(&self.context),
        }
    }
}

/// What a [`Publisher`](crate::Publisher) hears when the server did not store a valid event.
impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::TooLarge => Error::invalid_event(format!("event refused: {e}")),
            PublishError::Storage(reason) => Error::unavailable(reason),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
