//! The bridge between the loop and Redis: the only code in cluster mode that blocks on the network.
//!
//! Two threads, each with its own blocking Redis connection, talk to the loop through channels and
//! its [`mio::Waker`], the way `Publisher` handles do:
//! - the **writer** takes the loop's appends ([`Bridge::append`]), sends them with the append
//!   script ([`super::stream::APPEND_SCRIPT`], by `EVALSHA`, pipelined: everything queued goes in one
//!   round trip), and answers each with its event id or why it failed ([`FromRedis::Appended`]);
//! - the **reader** reads the stream from the last entry it handed over (`XREAD BLOCK`), and hands
//!   every entry over in stream order ([`FromRedis::Entries`]): every node inserts exactly these
//!   events, with these ids, so all nodes hold one log.
//!
//! The loop never waits on either: it takes what is there with [`Bridge::try_recv`] when the waker
//! fires. A thread that loses its connection says so once ([`FromRedis::State`]), fails what it
//! holds, and reconnects with capped exponential back-off; the reader then carries on from its last
//! entry, so nothing published meanwhile (through other nodes) is skipped or handed over twice, and
//! if Redis trimmed entries it had not read it says so ([`FromRedis::Lost`]) instead of skipping
//! them silently.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::event::Event;

/// Where the bridge connects and how it appends.
#[derive(Debug, Clone)]
pub(crate) struct BridgeConfig {
    /// `redis://[user:password@]host:port/db` (`--redis`).
    pub(crate) url: String,
    /// The stream's key (`--redis-key`).
    pub(crate) key: String,
    /// `MAXLEN ~` for each append (0: no trimming).
    pub(crate) maxlen: usize,
    /// The data cap entries read back are checked against (`--max-body`).
    pub(crate) max_data: usize,
}

/// The state of the bridge's connections, for `/health`, the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisState {
    /// Both threads are connected.
    Up,
    /// A thread lost its connection (or could not make one) and is retrying; the reason is Redis'
    /// or the socket's error.
    Down(String),
}

/// What the bridge tells the loop, in the order it happened.
#[derive(Debug)]
pub(crate) enum FromRedis {
    /// An append was accepted, with the event's id, or failed, with why (Redis unreachable, a
    /// script error); `token` is the loop's, as given to [`Bridge::append`]. An accepted event comes
    /// back through `Entries` like every other, possibly before or after this answer.
    Appended { token: u64, result: Result<u64, String> },
    /// Entries read back, in stream order, with their event ids. An entry that does not describe a
    /// valid event (written by something other than ssed) is skipped with a warning, its id too.
    Entries(Vec<(u64, Event)>),
    /// Entries after `after` (the last event id handed over) were trimmed before they were read;
    /// `first` is the first event id still in the stream (the next one to be handed over).
    Lost { after: u64, first: u64 },
    /// A connection state changed (not every retry: once per change).
    State(RedisState),
    /// Counters for the metrics: reconnections so far, and the last append's round trip.
    Stats { reconnects: u64, append_latency: Duration },
}

/// The running bridge; dropping it stops its threads.
pub(crate) struct Bridge {
    // The helper fills this in.
}

impl Bridge {
    /// Connects to Redis, loads the retained tail (the newest `tail` entries, oldest first), and
    /// starts the two threads, the reader going on from after that tail. Fails (naming the URL and
    /// the cause) if Redis cannot be reached now: a node that starts without its log would serve
    /// resumes wrongly.
    pub(crate) fn start(
        config: BridgeConfig,
        tail: usize,
        waker: Arc<mio::Waker>,
    ) -> Result<(Bridge, Vec<(u64, Event)>), Error> {
        let _ = (config, tail, waker);
        Err(Error::config("cluster mode is not built yet"))
    }

    /// Queues an append; never blocks. The answer comes as [`FromRedis::Appended`] with `token`.
    pub(crate) fn append(&self, token: u64, event: Event) {
        let _ = (token, event);
    }

    /// The next thing the bridge has to say, if any; never blocks.
    pub(crate) fn try_recv(&self) -> Option<FromRedis> {
        None
    }
}
