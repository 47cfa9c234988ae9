//! Durable history: events appended to segment files of checksummed records, read back on start.
//!
//! A record holds what re-encodes one event: id, topics, type, retry and data, behind a header with
//! its format, its length and a CRC-32. Segments are named after the lowest id they may hold
//! (`00000001795654479027289.seg`), so names sort in id order, rolled at a size, and deleted whole
//! once every event in them has left the in-memory history. On start every segment is read in order
//! and a damaged record (short read, bad checksum, ids out of order) is never served: at the end of
//! the newest segment it is a torn write and cut off; anywhere else it is a hole, reported to the
//! caller, and nothing intact is deleted (see [`Store::open`]).
//!
//! One process at a time: the directory is locked while the store is open.
//!
//! The store only writes and syncs; when a publish may be answered is the event loop's decision,
//! driven by [`Fsync`].
//!
//! # Record format
//!
//! A segment is records back to back, with no file header: each record carries its format version
//! in the top two bits of its first word. So a segment written by an older ssed is read and
//! appended to in place (new records follow the old ones in the same file), the copy made past a
//! hole is a plain byte range, and the search for the next intact record after damage works the
//! same in either format: both put the id right after an 8-byte header. All integers are little
//! endian; CRC-32 is the IEEE one (`crc32fast`); text is UTF-8.
//!
//! Version 2, written since topics and event types may be longer than 255 bytes:
//!
//! ```text
//! offset      size  field
//! 0           4     u32: 0x8000_0000 | payload length  (top bits 10: version 2; length < 2^30)
//! 4           4     u32: CRC-32 of bytes 0..4 followed by the payload
//! 8           8     payload: id, u64
//! 16          2              topic count, u16 (at least 1)
//!                            per topic: length u16 (up to 65535), then the topic's bytes
//!                            event type length u16 (0: no type), then its bytes
//!                            retry flag u8: 0 none, 1 followed by retry milliseconds u64
//!                            data length u32, then the data's bytes
//! ```
//!
//! Version 3, written only for events published through the Mercure hub (so a directory that
//! never saw one stays readable by an ssed that predates the hub): version 2's payload, then
//!
//! ```text
//!                            flags u8: 1 private, 2 published through the hub, 4 an id follows
//!                            (if 4) the publisher's id: length u16, then its bytes
//! ```
//!
//! with the top bits of the first word `11`.
//!
//! Version 1, the original format (read, never written):
//!
//! ```text
//! offset      size  field
//! 0           4     u32: payload length (at most 2^30: top bits 00, bar exactly 2^30)
//! 4           4     u32: CRC-32 of the payload
//! 8           8     payload: id, u64
//! 16          2              topic count, u16 (at least 1)
//!                            per topic: length u8, then the topic's bytes
//!                            event type length u8 (0: no type), then its bytes
//!                            retry flag u8: 0 none, 1 followed by retry milliseconds u64
//!                            data length u32, then the data's bytes
//! ```
//!
//! A first word above 2^30 whose top bits are not `10` is read as damage. The payload must be
//! consumed exactly. A version 2 checksum covers the first word too, so a damaged format bit or
//! length fails the checksum. An ssed from before version 2 reads such a record as damage (its
//! first word is a length above 2^30): a data directory this version has written to cannot go
//! back to an older ssed.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use log::{error, info, warn};

use crate::error::Error;
use crate::event::Event;

/// When a publish is considered safe, and so when it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Each record is written and `fdatasync`ed on its own before its publish is answered.
    Always,
    /// The publishes of one loop turn are written, then one `fdatasync` covers them all (group
    /// commit) before any of them is answered or delivered.
    #[default]
    Batch,
    /// Records are written to the page cache and the kernel flushes them when it likes: a crash of
    /// the process loses nothing, a crash of the machine loses the last few seconds.
    Never,
}

impl FromStr for Fsync {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            other => Err(Error::config(format!("--fsync {other:?}: expected always, batch or never"))),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Batch => "batch",
            Fsync::Never => "never",
        })
    }
}

/// One event as stored: its id and the event.
///
/// `E` is an owned [`Event`] when read back and a borrowed `&Event` when written, so a publish
/// writes its record without copying the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<E = Event> {
    /// Its id.
    pub id: u64,
    /// The event.
    pub event: E,
}

/// Bytes before a record's payload: its first word (format and length) and its checksum.
const HEADER_BYTES: usize = 8;
/// Version 1 records larger than this are treated as corruption when reading (the body cap is far
/// below); version 2 lengths have 30 bits, so they stay below it.
const MAX_RECORD_BYTES: usize = 1 << 30;
/// The top two bits of a record's first word: `00` in version 1 (a length of at most 2^30),
/// `10` in version 2, `01` (above 2^30) and `11` unused so far (read as damage).
const FORMAT_MASK: u32 = 0xC000_0000;
/// The format bits of a version 2 record.
const FORMAT_V2: u32 = 0x8000_0000;
/// The format bits of a version 3 record (version 2 plus the hub's extras).
const FORMAT_V3: u32 = 0xC000_0000;
/// Version 3 flags.
const V3_PRIVATE: u8 = 1;
const V3_HUB: u8 = 2;
const V3_ID: u8 = 4;
/// The longest topic or event type a version 2 record holds (its length is a `u16`).
pub const MAX_FIELD_BYTES: usize = u16::MAX as usize;
const SEGMENT_SUFFIX: &str = ".seg";

/// Why a record could not be written: a field is longer than the format can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// A topic longer than [`MAX_FIELD_BYTES`].
    TopicTooLong,
    /// An event type longer than [`MAX_FIELD_BYTES`].
    TypeTooLong,
    /// A publisher's id longer than [`MAX_FIELD_BYTES`].
    IdTooLong,
    /// More than `u16::MAX` topics.
    TooManyTopics,
    /// A payload of 2^30 bytes or more.
    RecordTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TopicTooLong => write!(f, "a topic is longer than {MAX_FIELD_BYTES} bytes"),
            EncodeError::TypeTooLong => write!(f, "the event type is longer than {MAX_FIELD_BYTES} bytes"),
            EncodeError::IdTooLong => write!(f, "the event's id is longer than {MAX_FIELD_BYTES} bytes"),
            EncodeError::TooManyTopics => write!(f, "more than {} topics", u16::MAX),
            EncodeError::RecordTooLong => write!(f, "the record is 1 GiB or longer"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends `record` to `out` in the current on-disk format (version 2, or 3 for an event of the
/// Mercure hub). On error `out` is left as it was.
pub fn encode_record<E: Borrow<Event>>(record: &Record<E>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let encoded = encode_v2(record.id, record.event.borrow(), out);
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

fn encode_v2(id: u64, event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    fn field(out: &mut Vec<u8>, text: &str, too_long: EncodeError) -> Result<(), EncodeError> {
        let len = u16::try_from(text.len()).map_err(|_| too_long)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(&id.to_le_bytes());
    let count = u16::try_from(event.topics().len()).map_err(|_| EncodeError::TooManyTopics)?;
    out.extend_from_slice(&count.to_le_bytes());
    for topic in event.topics() {
        field(out, topic, EncodeError::TopicTooLong)?;
    }
    field(out, event.event_type().unwrap_or(""), EncodeError::TypeTooLong)?;
    match event.retry_ms() {
        Some(ms) => {
            out.push(1);
            out.extend_from_slice(&ms.to_le_bytes());
        }
        None => out.push(0),
    }
    let data_len = u32::try_from(event.data().len()).map_err(|_| EncodeError::RecordTooLong)?;
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(event.data().as_bytes());
    let hub = event.is_hub() || event.is_private() || event.wire_id().is_some();
    if hub {
        let mut flags = 0;
        if event.is_private() {
            flags |= V3_PRIVATE;
        }
        if event.is_hub() {
            flags |= V3_HUB;
        }
        if event.wire_id().is_some() {
            flags |= V3_ID;
        }
        out.push(flags);
        if let Some(id) = event.wire_id() {
            field(out, id, EncodeError::IdTooLong)?;
        }
    }
    let payload_len = out.len() - start - HEADER_BYTES;
    let payload_len = u32::try_from(payload_len)
        .ok()
        .filter(|&len| len & FORMAT_MASK == 0)
        .ok_or(EncodeError::RecordTooLong)?;
    let word = (if hub { FORMAT_V3 } else { FORMAT_V2 } | payload_len).to_le_bytes();
    out[start..start + 4].copy_from_slice(&word);
    let crc = crc_v2(word, &out[start + HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A version 2 checksum: the first word as well as the payload, so a damaged length or format is
/// caught by the checksum rather than only by what it makes the payload look like.
fn crc_v2(word: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&word);
    hasher.update(payload);
    hasher.finalize()
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end inside the record (a torn write).
    Short,
    /// The checksum does not match (a torn or damaged write).
    Checksum,
    /// The checksum matches but the payload does not parse: a bug, or a different format.
    Malformed,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordError::Short => "record cut short",
            RecordError::Checksum => "checksum mismatch",
            RecordError::Malformed => "malformed record",
        })
    }
}

/// The two record layouts; they differ in the checksum and in the width of the topic and type
/// lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The original layout: lengths of one byte, the checksum over the payload only. Read, never
    /// written.
    V1,
    /// Lengths of two bytes, the checksum over the first word and the payload.
    V2,
    /// Version 2 and the hub's extras.
    V3,
}

/// Decodes the record at the front of `bytes`, in either format; returns it and its length on
/// disk.
pub fn decode_record(bytes: &[u8]) -> Result<(Record, usize), RecordError> {
    let header = bytes.get(..HEADER_BYTES).ok_or(RecordError::Short)?;
    let word: [u8; 4] = header[..4].try_into().expect("4 bytes");
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let word_value = u32::from_le_bytes(word);
    let (format, len) = if word_value as usize <= MAX_RECORD_BYTES {
        (Format::V1, word_value as usize)
    } else if word_value & FORMAT_MASK == FORMAT_V2 {
        (Format::V2, (word_value & !FORMAT_MASK) as usize)
    } else if word_value & FORMAT_MASK == FORMAT_V3 {
        (Format::V3, (word_value & !FORMAT_MASK) as usize)
    } else {
        return Err(RecordError::Checksum);
    };
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + len).ok_or(RecordError::Short)?;
    let expected = match format {
        Format::V1 => crc32fast::hash(payload),
        Format::V2 | Format::V3 => crc_v2(word, payload),
    };
    if expected != crc {
        return Err(RecordError::Checksum);
    }
    let record = parse_payload(payload, format).ok_or(RecordError::Malformed)?;
    Ok((record, HEADER_BYTES + len))
}

fn parse_payload(payload: &[u8], format: Format) -> Option<Record> {
    let mut reader = Reader(payload);
    let id = reader.u64()?;
    let topic_count = reader.u16()?;
    let mut topics = Vec::with_capacity(usize::from(topic_count));
    for _ in 0..topic_count {
        topics.push(reader.field(format)?);
    }
    let event_type = reader.field(format)?;
    let retry_ms = match reader.take(1)?[0] {
        0 => None,
        1 => Some(reader.u64()?),
        _ => return None,
    };
    let data_len = u32::from_le_bytes(reader.take(4)?.try_into().ok()?) as usize;
    let data = String::from_utf8(reader.take(data_len)?.to_vec()).ok()?;
    let (flags, wire_id) = match format {
        Format::V3 => {
            let flags = reader.take(1)?[0];
            let wire_id = if flags & V3_ID != 0 { Some(reader.field(format)?) } else { None };
            (flags, wire_id)
        }
        Format::V1 | Format::V2 => (0, None),
    };
    if !reader.0.is_empty() || topics.is_empty() {
        return None;
    }
    let event_type = (!event_type.is_empty()).then_some(event_type);
    let event = Event::from_record(topics, event_type, retry_ms, data).with_extras(
        wire_id,
        flags & V3_PRIVATE != 0,
        flags & V3_HUB != 0,
    );
    Some(Record { id, event })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A topic or event type: its length (one byte in version 1, two in version 2), then UTF-8.
    fn field(&mut self, format: Format) -> Option<String> {
        let len = match format {
            Format::V1 => usize::from(self.take(1)?[0]),
            Format::V2 | Format::V3 => usize::from(self.u16()?),
        };
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

struct Segment {
    path: PathBuf,
    /// Highest id in the segment (0 when it holds none yet).
    last_id: u64,
}

/// What [`Store::open`] hands back while reading the history, in id order.
#[derive(Debug)]
pub enum Replayed {
    /// An intact record.
    Record(Record),
    /// Damage: records between the one before and the one after may be lost. Whoever keeps the
    /// history must forget what came before, so a resume from there is told of the gap.
    Hole,
}

/// The lock file in the data directory: held (`flock`) for as long as the store is open, and holding
/// the owner's pid for the message a second process gets.
const LOCK_FILE: &str = "lock";
/// Suffix of a damaged segment kept aside for the operator (never read or deleted by ssed).
const DAMAGED_SUFFIX: &str = ".damaged";
/// Suffix of an intact segment set aside because it comes before damage (never read or deleted).
const SET_ASIDE_SUFFIX: &str = ".set-aside";
/// Suffix of a segment being rewritten; a leftover one is an interrupted repair and is removed.
const TEMP_SUFFIX: &str = ".tmp";

/// The open durable history: the segments on disk and the one being appended to.
pub struct Store {
    dir: PathBuf,
    fsync: Fsync,
    segment_limit: u64,
    /// Oldest first; the last one is `file`.
    segments: VecDeque<Segment>,
    file: File,
    /// Bytes of whole records in the active segment.
    len: u64,
    /// Bytes of the active segment known to be on disk (after the last sync).
    synced_len: u64,
    /// Records written since the last sync.
    unsynced: bool,
    buf: Vec<u8>,
    /// No id at or above this has been given out before: the highest segment name seen.
    next_id_floor: u64,
    /// The locked lock file: no second process may open the directory while it is held. The kernel
    /// releases it when the process ends, however it ends.
    _lock: File,
}

/// What reading one segment found.
#[derive(Default)]
struct Scanned {
    /// Highest trusted id in the segment (0: none).
    last_id: u64,
    /// End of the last trusted record.
    good_end: usize,
    /// Where the records after the segment's last hole start, if there is a hole inside it.
    after_hole: Option<usize>,
    /// The first id after that hole.
    first_after_hole: u64,
    /// Unreadable ranges followed by a trusted record: `(offset, bytes skipped, reason)`.
    holes: Vec<(usize, usize, String)>,
    /// Damage from this offset to the end that nothing could be recovered after.
    tail: Option<(usize, String)>,
}

/// Reads the records of one segment, passing each trusted one to `on` and a [`Replayed::Hole`] for
/// each damaged range with a trusted record after it.
///
/// Past damage, the next record is searched byte by byte: a place where a record decodes with a
/// valid checksum and an id above the last trusted one (and below `below`, the next segment's
/// first). Records carry their length and CRC-32, so a false find needs a checksum collision on
/// bytes that also look like a record.
fn read_segment(
    bytes: &[u8],
    last_id: &mut u64,
    below: Option<u64>,
    on: &mut impl FnMut(Replayed),
) -> Scanned {
    let mut scanned = Scanned::default();
    let mut at = 0;
    while at < bytes.len() {
        match decode_record(&bytes[at..]) {
            Ok((record, used)) if record.id > *last_id && below.is_none_or(|b| record.id < b) => {
                at += used;
                *last_id = record.id;
                scanned.last_id = record.id;
                scanned.good_end = at;
                on(Replayed::Record(record));
            }
            result => {
                let what = match result {
                    Ok(_) => "ids out of order".to_string(),
                    Err(e) => e.to_string(),
                };
                match find_record(bytes, at + 1, *last_id, below) {
                    Some((next, id)) => {
                        scanned.holes.push((at, next - at, what));
                        scanned.after_hole = Some(next);
                        scanned.first_after_hole = id;
                        on(Replayed::Hole);
                        at = next;
                    }
                    None => {
                        scanned.tail = Some((at, what));
                        break;
                    }
                }
            }
        }
    }
    scanned
}

/// The first offset from `from` on where a record with an id in `(after, below)` decodes intact.
fn find_record(bytes: &[u8], from: usize, after: u64, below: Option<u64>) -> Option<(usize, u64)> {
    (from..bytes.len()).find_map(|at| {
        // The id is the payload's first field: check it before paying for a checksum.
        let id = u64::from_le_bytes(bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + 8)?.try_into().ok()?);
        if id <= after || below.is_some_and(|b| id >= b) {
            return None;
        }
        match decode_record(&bytes[at..]) {
            Ok((record, _)) if record.id == id => Some((at, id)),
            _ => None,
        }
    })
}

/// Checks `dir`, creating its last component if it is missing (never its parents: a typo in the
/// path must not start an empty history somewhere else). Returns whether it was created.
fn prepare_dir(dir: &Path) -> Result<bool, Error> {
    if dir.as_os_str().is_empty() {
        return Err(Error::config("--data-dir is empty: give the directory for the durable history"));
    }
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(_) => Err(Error::config(format!("the data directory {} is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::config(format!(
                "the data directory {} does not exist and neither does its parent (only the last \
                 component is created, so a mistyped path does not start an empty history)",
                dir.display()
            ))),
            Err(e) => Err(Error::io(format!("creating the data directory {}", dir.display()), e)),
        },
        Err(e) => Err(Error::io(format!("reading the data directory {}", dir.display()), e)),
    }
}

/// Takes the directory's lock, or says which process holds it.
///
/// Two processes appending to one directory would each roll and delete the other's segments, and
/// both would answer `200`: the second start must fail instead. `flock` rather than a pid file: the
/// kernel drops the lock when its holder exits or is killed, so a crash needs no clean-up step.
fn lock_dir(dir: &Path) -> Result<File, Error> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(format!("opening the lock file {}", path.display()), e))?;
    // SAFETY: flock only takes a descriptor and flags; `file` owns the descriptor across the call.
    // (std's File::try_lock would do without unsafe but needs Rust 1.89, above the MSRV.)
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim().parse::<u32>() {
            Ok(pid) => format!("pid {pid}"),
            Err(_) => "pid unknown".to_string(),
        };
        return Err(Error::config(format!(
            "the data directory {} is in use by another ssed process ({holder}); two processes on one \
             directory would lose each other's events",
            dir.display()
        )));
    }
    let written =
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(e) = written {
        // The lock holds without the pid; only the message for a second process is poorer.
        warn!("could not write the pid into {}: {e}", path.display());
    }
    Ok(file)
}

/// `path` with `suffix` added, numbered if that name is taken (an earlier repair).
fn aside_path(path: &Path, suffix: &str) -> PathBuf {
    let base = format!("{}{suffix}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

fn rename_aside(path: &Path, suffix: &str) -> Result<PathBuf, Error> {
    let to = aside_path(path, suffix);
    fs::rename(path, &to)
        .map_err(|e| Error::io(format!("renaming {} to {}", path.display(), to.display()), e))?;
    Ok(to)
}

impl Store {
    /// Opens the history in `dir` (creating the directory itself, not its parents) and locks it
    /// against a second process, then calls `on` with every trusted record in id order and a
    /// [`Replayed::Hole`] wherever damage may have lost records.
    ///
    /// Only a torn tail of the newest segment (a write the process did not finish) is cut off, with
    /// a warning. Any other damage is an error in the log, and no intact record is deleted: the
    /// damaged segment is renamed `*.damaged`, the segments before it are renamed `*.set-aside`
    /// (they precede a hole, so serving them would hide it), and the records found past the damage
    /// are copied into a fresh segment that the history goes on from.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        segment_limit: u64,
        mut on: impl FnMut(Replayed),
    ) -> Result<Store, Error> {
        if prepare_dir(dir)? {
            info!("created the data directory {}", dir.display());
        }
        let lock = lock_dir(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let entries = fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing the data directory {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("listing the data directory {}", dir.display()), e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(TEMP_SUFFIX) && name.contains(SEGMENT_SUFFIX) {
                // An interrupted repair: the segment it was made from is still there, whole.
                let _ = fs::remove_file(&path);
                continue;
            }
            if let Some(first) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                names.push((first, path));
            }
        }
        names.sort();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut last_id = 0;
        let mut next_id_floor = 0;
        for (i, (first, path)) in names.iter().enumerate() {
            next_id_floor = next_id_floor.max(*first);
            let newest = i + 1 == names.len();
            let below = names.get(i + 1).map(|(next, _)| *next);
            let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let scanned = read_segment(&bytes, &mut last_id, below, &mut on);
            let tail_is_hole = scanned.tail.is_some() && !newest;
            if scanned.holes.is_empty() && !tail_is_hole {
                if let Some((at, what)) = &scanned.tail {
                    // The newest segment ends in a record the process never finished writing.
                    let cut = bytes.len() - at;
                    warn!(
                        "{}: {what} at byte {at}; cutting off the last {}",
                        path.display(),
                        crate::server::count(cut as usize, "byte")
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| Error::io(format!("opening {} to repair it", path.display()), e))?;
                    file.set_len(*at as u64)
                        .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
                    file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
                }
                if scanned.last_id == 0 && !newest {
                    // Empty: nothing to keep.
                    let _ = fs::remove_file(path);
                    continue;
                }
                segments.push_back(Segment { path: path.clone(), last_id: scanned.last_id });
                continue;
            }
            if tail_is_hole {
                on(Replayed::Hole);
            }
            Store::set_aside(dir, path, &bytes, &scanned, &mut segments)?;
        }
        if segments.back().is_none() {
            let path = segment_path(dir, (last_id + 1).max(next_id_floor));
            segments.push_back(Segment { path, last_id: 0 });
        }
        let path = segments.back().expect("an active segment").path.clone();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
        sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            fsync,
            segment_limit,
            segments,
            file,
            len,
            synced_len: len,
            unsynced: false,
            buf: Vec::new(),
            next_id_floor: next_id_floor.max(last_id + 1),
            _lock: lock,
        })
    }

    /// Keeps a damaged segment and everything before it out of the history without deleting any of
    /// it, and carries the records after its last hole on in a fresh segment.
    ///
    /// The order keeps a crash at any step safe: the copy is written and synced under a temporary
    /// name and then renamed into the history, and only then is anything renamed aside. A restart in
    /// between finds the damage again: the copy's name bounds the ids of the damaged segment, so the
    /// copied records are not found in it twice, and its repair finishes.
    fn set_aside(
        dir: &Path,
        path: &Path,
        bytes: &[u8],
        scanned: &Scanned,
        segments: &mut VecDeque<Segment>,
    ) -> Result<(), Error> {
        let copy = match scanned.after_hole {
            Some(from) if scanned.good_end > from => {
                let target = segment_path(dir, scanned.first_after_hole);
                let temp = PathBuf::from(format!("{}{TEMP_SUFFIX}", target.display()));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&temp)
                    .map_err(|e| Error::io(format!("creating {}", temp.display()), e))?;
                file.write_all(&bytes[from..scanned.good_end])
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(format!("writing {}", temp.display()), e))?;
                fs::rename(&temp, &target).map_err(|e| {
                    Error::io(format!("renaming {} to {}", temp.display(), target.display()), e)
                })?;
                Some(target)
            }
            _ => None,
        };
        let mut set_aside = Vec::new();
        for segment in segments.drain(..) {
            set_aside.push(rename_aside(&segment.path, SET_ASIDE_SUFFIX)?);
        }
        let damaged = rename_aside(path, DAMAGED_SUFFIX)?;
        let mut damage: Vec<String> = scanned
            .holes
            .iter()
            .map(|(at, skipped, what)| format!("{what} at byte {at}, {skipped} bytes unreadable"))
            .collect();
        if let Some((at, what)) = &scanned.tail {
            damage.push(format!("{what} at byte {at}, the last {} bytes unreadable", bytes.len() - at));
        }
        let kept = match &copy {
            Some(target) => format!(
                "the {} bytes of records after it continue in {}",
                scanned.good_end - scanned.after_hole.unwrap_or(0),
                target.display()
            ),
            None => "no record after it in that file".to_string(),
        };
        error!(
            "{}: damaged ({}); kept as {}; {kept}; the events before the damage are no longer served and \
             a resume from them is told of the gap",
            path.display(),
            damage.join("; "),
            damaged.display(),
        );
        if !set_aside.is_empty() {
            error!(
                "{} older segments set aside as *{SET_ASIDE_SUFFIX} (intact, but before the damage): {}; \
                 ssed never reads or deletes them",
                set_aside.len(),
                set_aside.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(target) = copy {
            segments.push_back(Segment { path: target, last_id: scanned.last_id });
        }
        sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        Ok(())
    }

    /// Ids from here on are new: nothing at or above it was ever given out by this history.
    pub fn next_id_floor(&self) -> u64 {
        self.next_id_floor
    }

    /// The sync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Writes a record (and, with [`Fsync::Always`], syncs it). On failure the segment is cut back to
    /// its last whole record, so a later append after the disk has room again starts cleanly.
    ///
    /// A record the format cannot hold (see [`EncodeError`]) is refused with
    /// [`io::ErrorKind::InvalidInput`] before anything is written.
    pub fn append<E: Borrow<Event>>(&mut self, record: &Record<E>) -> io::Result<()> {
        self.buf.clear();
        encode_record(record, &mut self.buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if self.len >= self.segment_limit && self.segments.back().is_some_and(|s| s.last_id > 0) {
            self.roll(record.id)?;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            self.cut_back(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        self.segments.back_mut().expect("an active segment").last_id = record.id;
        self.unsynced = true;
        if self.fsync == Fsync::Always {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes the records written since the last commit durable ([`Fsync::Batch`]: one `fdatasync`
    /// for all of them). On failure the unsynced records are cut off: they were never acknowledged.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.unsynced && self.fsync == Fsync::Batch {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the page cache cannot be trusted to hold these records (they may
            // be dropped or written later); cut them so a restart never serves unacknowledged ones.
            self.cut_back(self.synced_len);
            return Err(e);
        }
        self.synced_len = self.len;
        self.unsynced = false;
        Ok(())
    }

    fn cut_back(&mut self, len: u64) {
        if let Err(e) = self.file.set_len(len) {
            error!("could not cut {} back to {len} bytes: {e}", self.dir.display());
        }
        self.len = len;
    }

    fn roll(&mut self, first_id: u64) -> io::Result<()> {
        if self.fsync != Fsync::Never {
            self.file.sync_data()?;
            self.synced_len = self.len;
        }
        let path = segment_path(&self.dir, first_id);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if self.fsync != Fsync::Never {
            sync_dir(&self.dir)?;
        }
        self.file = file;
        self.len = 0;
        self.synced_len = 0;
        self.segments.push_back(Segment { path, last_id: 0 });
        Ok(())
    }

    /// Deletes whole segments whose every event is older than `oldest_kept` (the oldest id the
    /// in-memory history still holds; `None` when it holds none).
    ///
    /// The active segment goes too once every event in it has left memory (`--history-age` on a
    /// quiet server): appends move on to a fresh, empty segment and the old one is deleted, so no
    /// expired event stays on disk for a restart to serve.
    pub fn retain(&mut self, oldest_kept: Option<u64>) {
        let expired = |segment: &Segment| oldest_kept.is_none_or(|oldest| segment.last_id < oldest);
        let active = self.segments.back().expect("an active segment");
        if self.len > 0 && active.last_id > 0 && expired(active) {
            let next = active.last_id + 1;
            if let Err(e) = self.roll(next) {
                warn!("could not start a new segment in {} to drop expired events: {e}", self.dir.display());
            }
        }
        let mut deleted = false;
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("len > 1");
            if !expired(front) {
                break;
            }
            let segment = self.segments.pop_front().expect("len > 1");
            if let Err(e) = fs::remove_file(&segment.path) {
                warn!("could not delete {}: {e}", segment.path.display());
            }
            deleted = true;
        }
        if deleted && self.fsync != Fsync::Never {
            // Else a crash could bring the deleted names back, and a restart serve what expired.
            if let Err(e) = sync_dir(&self.dir) {
                warn!("syncing {} after deleting segments: {e}", self.dir.display());
            }
        }
    }

    /// Number of segment files.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}{SEGMENT_SUFFIX}"))
}

/// Syncs a directory so a new or removed file name survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record from its fields; the store takes them as they come, checked or not.
    fn stored(
        id: u64,
        topics: Vec<String>,
        event_type: Option<String>,
        retry_ms: Option<u64>,
        data: String,
    ) -> Record {
        Record { id, event: Event::from_record(topics, event_type, retry_ms, data) }
    }

    fn record(id: u64, data: &str) -> Record {
        stored(id, vec!["a".into(), "b/c".into()], Some("t".into()), Some(5), data.into())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ssed-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn load(dir: &Path, limit: u64) -> (Store, Vec<Record>) {
        let mut records = Vec::new();
        let store = Store::open(dir, Fsync::Batch, limit, |r| match r {
            Replayed::Record(r) => records.push(r),
            Replayed::Hole => panic!("no hole expected"),
        })
        .unwrap();
        (store, records)
    }

    /// The version 1 encoder exactly as ssed had it before version 2, kept to write old segments.
    fn encode_v1(record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        out.extend_from_slice(&record.id.to_le_bytes());
        let event = &record.event;
        out.extend_from_slice(&(event.topics().len() as u16).to_le_bytes());
        for topic in event.topics() {
            out.push(topic.len() as u8);
            out.extend_from_slice(topic.as_bytes());
        }
        let event_type = event.event_type().unwrap_or("");
        out.push(event_type.len() as u8);
        out.extend_from_slice(event_type.as_bytes());
        match event.retry_ms() {
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(event.data().len() as u32).to_le_bytes());
        out.extend_from_slice(event.data().as_bytes());
        let payload_len = (out.len() - start - HEADER_BYTES) as u32;
        let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// `records` as `format` writes them, back to back.
    fn encode_all(format: Format, records: &[Record]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in records {
            match format {
                Format::V1 => encode_v1(record, &mut bytes),
                Format::V2 | Format::V3 => encode_record(record, &mut bytes).unwrap(),
            }
        }
        bytes
    }

    const FORMATS: [Format; 2] = [Format::V1, Format::V2];

    #[test]
    fn records_round_trip_in_both_formats() {
        let plain = stored(1, vec!["x".into()], None, None, String::new());
        for format in FORMATS {
            let bytes = encode_all(format, &[record(7, "héllo\nworld"), plain.clone()]);
            let (first, used) = decode_record(&bytes).unwrap();
            assert_eq!(first, record(7, "héllo\nworld"), "{format:?}");
            assert_eq!(
                decode_record(&bytes[used..]).unwrap(),
                (plain.clone(), bytes.len() - used),
                "{format:?}"
            );
        }
    }

    /// One record of each format byte by byte, as the module doc lays them out: what is on disk
    /// today must keep reading the same, and what is written now must not drift.
    #[test]
    fn both_formats_match_their_documented_bytes() {
        let mut v1 = vec![21, 0, 0, 0, 0x3f, 0x1d, 0xa5, 0xf9]; // length 21; CRC-32 of the payload
        v1.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // id
        v1.extend_from_slice(&[1, 0, 2, b'a', b'b']); // one topic, "ab"
        v1.extend_from_slice(&[1, b't', 0]); // type "t", no retry
        v1.extend_from_slice(&[1, 0, 0, 0, b'd']); // data "d"
        let old = stored(0x0102_0304_0506_0708, vec!["ab".into()], Some("t".into()), None, "d".into());
        assert_eq!(decode_record(&v1).unwrap(), (old.clone(), v1.len()));
        assert_eq!(encode_all(Format::V1, &[old]), v1, "the test's v1 encoder writes the old layout");

        let mut v2 = vec![31, 0, 0, 0x80, 0xcc, 0xee, 0x7a, 0xf0]; // version 2, length 31; CRC-32
        v2.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // id
        v2.extend_from_slice(&[1, 0, 2, 0, b'a', b'b']); // one topic, "ab"
        v2.extend_from_slice(&[1, 0, b't']); // type "t"
        v2.extend_from_slice(&[1, 0xe8, 3, 0, 0, 0, 0, 0, 0]); // retry 1000 ms
        v2.extend_from_slice(&[1, 0, 0, 0, b'd']); // data "d"
        let new = stored(0x0102_0304_0506_0708, vec!["ab".into()], Some("t".into()), Some(1000), "d".into());
        assert_eq!(decode_record(&v2).unwrap(), (new.clone(), v2.len()));
        assert_eq!(encode_all(Format::V2, &[new]), v2);
    }

    #[test]
    fn hub_events_keep_their_id_privacy_and_origin_in_version_3_and_only_they_use_it() {
        let topics = vec!["https://example.com/books/1".to_string(), "with space é".into()];
        for (wire_id, private, hub) in [
            (Some("urn:uuid:7"), true, true),
            (None, true, true),
            (None, false, true),
            (Some("x"), false, false),
        ] {
            let event = Event::from_record(topics.clone(), None, None, "d".into()).with_extras(
                wire_id.map(str::to_string),
                private,
                hub,
            );
            let record = Record { id: 9, event };
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes).unwrap();
            assert_eq!(bytes[3] & 0xC0, 0xC0, "version 3 bits for {wire_id:?} {private} {hub}");
            let (back, used) = decode_record(&bytes).unwrap();
            assert_eq!((back, used), (record, bytes.len()));
        }
        let mut plain = Vec::new();
        encode_record(&record(1, "d"), &mut plain).unwrap();
        assert_eq!(plain[3] & 0xC0, 0x80, "a plain event stays version 2, readable by older ssed");
    }

    /// A topic of `len` bytes, not all ASCII, that is still valid UTF-8.
    fn long_text(len: usize, seed: char) -> String {
        let mut text = "é/".repeat(len / 3);
        while text.len() < len {
            text.push(seed);
        }
        text
    }

    fn long_topics(field_len: usize) -> Vec<String> {
        vec![long_text(field_len, 'a'), "short".into(), long_text(field_len, 'b')]
    }

    fn long_record(id: u64, field_len: usize) -> Record {
        stored(id, long_topics(field_len), Some(long_text(field_len, 't')), None, "long".into())
    }

    #[test]
    fn topics_and_types_up_to_64_kib_round_trip_and_longer_ones_are_refused() {
        for len in [256, 4096, MAX_FIELD_BYTES] {
            let record = long_record(9, len);
            assert_eq!(record.event.topics()[0].len(), len);
            let bytes = encode_all(Format::V2, std::slice::from_ref(&record));
            assert_eq!(decode_record(&bytes).unwrap(), (record, bytes.len()), "fields of {len} bytes");
        }
        let mut out = vec![1, 2, 3];
        let mut topics = long_topics(10);
        topics[1] = long_text(MAX_FIELD_BYTES + 1, 'x');
        let record = stored(9, topics, Some(long_text(10, 't')), None, "long".into());
        assert_eq!(encode_record(&record, &mut out), Err(EncodeError::TopicTooLong));
        assert_eq!(out, [1, 2, 3], "nothing of a refused record is left behind");
        let record =
            stored(9, long_topics(10), Some(long_text(MAX_FIELD_BYTES + 1, 'x')), None, "long".into());
        assert_eq!(encode_record(&record, &mut out), Err(EncodeError::TypeTooLong));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn a_store_keeps_4_kib_topics_and_refuses_what_the_format_cannot_hold() {
        let dir = temp_dir("long");
        let (mut store, _) = load(&dir, 1 << 20);
        store.append(&long_record(1, 4096)).unwrap();
        let mut topics = long_topics(4096);
        topics.push(long_text(MAX_FIELD_BYTES + 1, 'x'));
        let too_long = stored(2, topics, Some(long_text(4096, 't')), None, "long".into());
        let err = store.append(&too_long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("topic is longer than 65535 bytes"), "{err}");
        store.append(&long_record(3, 4096)).unwrap();
        store.commit().unwrap();
        drop(store);
        let (_, records) = load(&dir, 1 << 20);
        assert_eq!(records, vec![long_record(1, 4096), long_record(3, 4096)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `bytes` (one record) decodes, every truncation of it is `Short`, and flipping any of `bits`
    /// in any of its bytes is caught.
    fn assert_damage_detected(bytes: &[u8], bits: &[u8], what: &str) {
        assert_eq!(decode_record(bytes).map(|(_, used)| used), Ok(bytes.len()), "{what}: intact");
        for cut in 0..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut]).unwrap_err(), RecordError::Short, "{what}: cut at {cut}");
        }
        for at in 0..bytes.len() {
            for &bit in bits {
                let mut flipped = bytes.to_vec();
                flipped[at] ^= bit;
                assert!(decode_record(&flipped).is_err(), "{what}: flip of {bit:#x} at {at} went unnoticed");
            }
        }
    }

    #[test]
    fn damage_is_detected_in_both_formats() {
        let every_bit: Vec<u8> = (0..8).map(|b| 1 << b).collect();
        for format in FORMATS {
            let bytes = encode_all(format, &[record(7, "data")]);
            assert_damage_detected(&bytes, &every_bit, &format!("{format:?}"));
        }
        // Longer than a version 1 length can say, every bit; 4 KiB fields, one bit per byte.
        let bytes = encode_all(Format::V2, &[long_record(7, 300)]);
        assert_damage_detected(&bytes, &every_bit, "300-byte fields");
        let bytes = encode_all(Format::V2, &[long_record(7, 4096)]);
        assert_damage_detected(&bytes, &[0x10], "4 KiB fields");
    }

    #[test]
    fn a_version_2_record_with_its_format_bit_cleared_fails_the_checksum() {
        // Read as version 1 its payload might even parse; the checksum over the first word stops it.
        let mut bytes = encode_all(Format::V2, &[record(7, "data")]);
        bytes[3] &= 0x7f;
        assert_eq!(decode_record(&bytes).unwrap_err(), RecordError::Checksum);
        let mut bytes = encode_all(Format::V2, &[record(7, "data")]);
        bytes[3] |= 0x40; // top bits 11: no such format
        assert_eq!(decode_record(&bytes).unwrap_err(), RecordError::Checksum);
    }

    /// Writes `records` as one segment file in `format`, named after the first id.
    fn write_segment(dir: &Path, format: Format, records: &[Record]) -> PathBuf {
        let path = segment_path(dir, records[0].id);
        fs::write(&path, encode_all(format, records)).unwrap();
        path
    }

    fn mixed_record(id: u64) -> Record {
        stored(
            id,
            vec![format!("topic-{id}"), "all".into()],
            id.is_multiple_of(2).then(|| format!("type-{id}")),
            id.is_multiple_of(3).then_some(id * 100),
            format!("data {id}\nline two"),
        )
    }

    #[test]
    fn version_1_segments_load_intact_and_take_version_2_records_after_them() {
        let dir = temp_dir("v1");
        fs::create_dir(&dir).unwrap();
        let old: Vec<Record> = (1..=6).map(mixed_record).collect();
        let first = write_segment(&dir, Format::V1, &old[..3]);
        let active = write_segment(&dir, Format::V1, &old[3..]);
        let first_bytes = fs::read(&first).unwrap();
        let active_bytes = fs::read(&active).unwrap();
        assert!(first_bytes[3] & 0xc0 == 0 && active_bytes[3] & 0xc0 == 0, "written in version 1");

        let (mut store, records) = load(&dir, 1 << 20);
        assert_eq!(records, old, "every field of every version 1 record");
        assert_eq!(store.next_id_floor(), 7);
        let new = [long_record(7, 4096), mixed_record(8)];
        for record in &new {
            store.append(record).unwrap();
        }
        store.commit().unwrap();
        drop(store);
        assert_eq!(segment_files(&dir), vec![first.clone(), active.clone()], "appended in place");
        assert_eq!(fs::read(&first).unwrap(), first_bytes, "old segments are not rewritten");
        assert!(fs::read(&active).unwrap().starts_with(&active_bytes));

        let (_, records) = load(&dir, 1 << 20);
        let mut expected = old.clone();
        expected.extend(new.iter().cloned());
        assert_eq!(records, expected, "both formats, in order, after a restart");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_crosses_from_version_1_to_version_2_records_in_one_segment() {
        let dir = temp_dir("mixed");
        fs::create_dir(&dir).unwrap();
        let old: Vec<Record> = (1..=3).map(mixed_record).collect();
        let path = write_segment(&dir, Format::V1, &old);
        let v1_len = fs::metadata(&path).unwrap().len() as usize;
        let (mut store, _) = load(&dir, 1 << 20);
        for id in 4..=6 {
            store.append(&mixed_record(id)).unwrap();
        }
        store.commit().unwrap();
        drop(store);
        let whole = fs::read(&path).unwrap();

        // A torn version 2 record at the end is cut off, back to the last whole one.
        fs::write(&path, &whole[..whole.len() - 4]).unwrap();
        let (store, seen) = replay(&dir, 1 << 20).unwrap();
        assert_eq!(seen, (1..=5).collect::<Vec<_>>());
        drop(store);

        // Damage in the version 1 part: the scan finds the version 2 records after it.
        let mut bytes = whole.clone();
        bytes[v1_len - 5] ^= 0x08; // inside record 3, the last version 1 one
        fs::write(&path, &bytes).unwrap();
        let (_, seen) = replay(&dir, 1 << 20).unwrap();
        assert_eq!(seen, vec![1, 2, 0, 4, 5, 6]);
        let (_, records) = load(&dir, 1 << 20);
        assert_eq!(records, (4..=6).map(mixed_record).collect::<Vec<_>>(), "copied past the hole intact");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopens_with_everything_appended_and_rolls_segments() {
        let dir = temp_dir("reopen");
        let (mut store, records) = load(&dir, 100);
        assert!(records.is_empty());
        for id in 1..=10 {
            store.append(&record(id, "0123456789")).unwrap();
            store.commit().unwrap();
        }
        assert!(store.segment_count() > 1, "rolled at 100 bytes");
        drop(store);
        let (_, records) = load(&dir, 100);
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = temp_dir("torn");
        let (mut store, _) = load(&dir, 1 << 20);
        for id in 1..=3 {
            store.append(&record(id, "x")).unwrap();
        }
        store.commit().unwrap();
        drop(store);
        let path = segment_files(&dir).pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let (mut store, records) = load(&dir, 1 << 20);
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        store.append(&record(4, "after")).unwrap();
        store.commit().unwrap();
        drop(store);
        let (_, records) = load(&dir, 1 << 20);
        assert_eq!(
            records.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 4],
            "appends go after the cut"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retain_deletes_whole_old_segments() {
        let dir = temp_dir("retain");
        let (mut store, _) = load(&dir, 60);
        for id in 1..=20 {
            store.append(&record(id, "0123456789")).unwrap();
        }
        store.commit().unwrap();
        let before = store.segment_count();
        store.retain(Some(15));
        assert!(store.segment_count() < before);
        drop(store);
        let (_, records) = load(&dir, 60);
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        assert!(ids.contains(&15) && ids.contains(&20), "{ids:?}");
        assert!(!ids.contains(&1), "{ids:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Everything `open` hands back: record ids, and 0 for a hole.
    fn replay(dir: &Path, limit: u64) -> Result<(Store, Vec<u64>), Error> {
        let mut seen = Vec::new();
        let store = Store::open(dir, Fsync::Batch, limit, |r| match r {
            Replayed::Record(r) => seen.push(r.id),
            Replayed::Hole => seen.push(0),
        })?;
        Ok((store, seen))
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(SEGMENT_SUFFIX))
            .collect();
        files.sort();
        files
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(suffix))
            .collect()
    }

    /// Four segments of five records (ids 1 to 20) in `format`: version 2 written by the store
    /// (rolled at a size that fits five), version 1 by hand as an older ssed left them. Returns the
    /// directory, the bytes of one record and the segment size limit to reopen with.
    fn four_segments(name: &str, format: Format) -> (PathBuf, usize, u64) {
        let dir = temp_dir(&format!("{name}-{format:?}"));
        let size = encode_all(format, &[record(1, "0123456789")]).len();
        let limit = 4 * size as u64 + 1;
        match format {
            Format::V1 => {
                fs::create_dir(&dir).unwrap();
                for first in [1, 6, 11, 16] {
                    let records: Vec<Record> =
                        (first..first + 5).map(|id| record(id, "0123456789")).collect();
                    write_segment(&dir, format, &records);
                }
            }
            Format::V2 | Format::V3 => {
                let (mut store, _) = load(&dir, limit);
                for id in 1..=20 {
                    store.append(&record(id, "0123456789")).unwrap();
                }
                store.commit().unwrap();
                assert_eq!(store.segment_count(), 4);
            }
        }
        let files = segment_files(&dir);
        assert_eq!(files.len(), 4);
        assert!(files.iter().all(|f| fs::metadata(f).unwrap().len() == 5 * size as u64));
        (dir, size, limit)
    }

    #[test]
    fn damage_in_an_older_segment_keeps_every_intact_record_and_reports_a_hole() {
        for format in FORMATS {
            let (dir, size, limit) = four_segments("older", format);
            let first = segment_files(&dir)[0].clone();
            let original = fs::read(&first).unwrap();
            let mut bytes = original.clone();
            bytes[size + 30] ^= 0x04; // inside record 2
            fs::write(&first, &bytes).unwrap();

            let (store, seen) = replay(&dir, limit).unwrap();
            let mut expected = vec![1, 0];
            expected.extend(3..=20);
            assert_eq!(seen, expected, "{format:?}: record 1, the hole, then everything after the damage");
            drop(store);
            // The damaged file is kept as it was; the records after the damage were copied on.
            let damaged = files_ending(&dir, DAMAGED_SUFFIX);
            assert_eq!(damaged.len(), 1, "{damaged:?}");
            assert_eq!(fs::read(&damaged[0]).unwrap(), bytes);
            assert!(segment_files(&dir)[0].ends_with(format!("{:020}{SEGMENT_SUFFIX}", 3)));

            // The hole stays a hole: the next start begins after it (the history's first id, 3, tells
            // a resume from before it of the gap) and reads the rest exactly once.
            let (_, seen) = replay(&dir, limit).unwrap();
            assert_eq!(seen, (3..=20).collect::<Vec<_>>(), "{format:?}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn segments_before_damage_are_set_aside_not_deleted() {
        for format in FORMATS {
            let (dir, _, limit) = four_segments("aside", format);
            let files = segment_files(&dir);
            let before: Vec<Vec<u8>> = files[..2].iter().map(|p| fs::read(p).unwrap()).collect();
            let mut bytes = fs::read(&files[2]).unwrap();
            bytes[10] ^= 0x01; // record 11, the third segment's first
            fs::write(&files[2], &bytes).unwrap();

            let (_, seen) = replay(&dir, limit).unwrap();
            let mut expected: Vec<u64> = (1..=10).collect();
            expected.push(0);
            expected.extend(12..=20);
            assert_eq!(seen, expected, "{format:?}");
            let mut aside = files_ending(&dir, SET_ASIDE_SUFFIX);
            aside.sort();
            assert_eq!(
                aside.iter().map(|p| fs::read(p).unwrap()).collect::<Vec<_>>(),
                before,
                "{format:?}: kept byte for byte"
            );
            let (_, seen) = replay(&dir, limit).unwrap();
            assert_eq!(seen, (12..=20).collect::<Vec<_>>(), "{format:?}: set-aside files are not read");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_torn_tail_of_an_older_segment_is_a_hole_not_a_cut() {
        for format in FORMATS {
            let (dir, _, limit) = four_segments("oldtail", format);
            let first = segment_files(&dir)[0].clone();
            let len = fs::metadata(&first).unwrap().len();
            OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 3).unwrap();
            let (_, seen) = replay(&dir, limit).unwrap();
            let mut expected: Vec<u64> = (1..=4).collect();
            expected.push(0);
            expected.extend(6..=20);
            assert_eq!(seen, expected, "{format:?}: records after an older segment's tail may be missing");
            assert_eq!(files_ending(&dir, DAMAGED_SUFFIX).len(), 1);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_is_cut_off_in_both_formats() {
        for format in FORMATS {
            let (dir, size, limit) = four_segments("newtail", format);
            let last = segment_files(&dir)[3].clone();
            let len = fs::metadata(&last).unwrap().len();
            OpenOptions::new().write(true).open(&last).unwrap().set_len(len - 3).unwrap();
            let (mut store, seen) = replay(&dir, limit).unwrap();
            assert_eq!(seen, (1..=19).collect::<Vec<_>>(), "{format:?}");
            assert_eq!(fs::metadata(&last).unwrap().len(), 4 * size as u64, "{format:?}: cut to record 19");
            store.append(&record(21, "after")).unwrap();
            store.commit().unwrap();
            drop(store);
            let (_, seen) = replay(&dir, limit).unwrap();
            let mut expected: Vec<u64> = (1..=19).collect();
            expected.push(21);
            assert_eq!(seen, expected, "{format:?}: appends go after the cut");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn damage_in_the_newest_segment_with_records_after_it_is_a_hole() {
        for format in FORMATS {
            let (dir, size, limit) = four_segments("newest", format);
            let last = segment_files(&dir)[3].clone();
            let mut bytes = fs::read(&last).unwrap();
            bytes[size + 20] ^= 0x40; // record 17
            fs::write(&last, &bytes).unwrap();
            let (mut store, seen) = replay(&dir, limit).unwrap();
            let mut expected: Vec<u64> = (1..=16).collect();
            expected.push(0);
            expected.extend(18..=20);
            assert_eq!(seen, expected, "{format:?}");
            store.append(&record(21, "after")).unwrap();
            store.commit().unwrap();
            drop(store);
            let (_, seen) = replay(&dir, limit).unwrap();
            assert_eq!(seen, (18..=21).collect::<Vec<_>>(), "{format:?}: appends go on in the copy");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_repair_interrupted_before_the_damaged_file_was_renamed_finishes_without_duplicates() {
        for format in FORMATS {
            let (dir, size, limit) = four_segments("interrupted", format);
            let first = segment_files(&dir)[0].clone();
            let mut bytes = fs::read(&first).unwrap();
            bytes[size + 30] ^= 0x04;
            fs::write(&first, &bytes).unwrap();
            drop(replay(&dir, limit).unwrap());
            // As if the process died after the copy got its name but before the damaged file moved.
            fs::remove_file(files_ending(&dir, DAMAGED_SUFFIX).pop().unwrap()).unwrap();
            fs::write(&first, &bytes).unwrap();
            let (_, seen) = replay(&dir, limit).unwrap();
            let mut expected = vec![1, 2, 0];
            expected.extend(3..=20);
            // Records 1 and (on this second pass) none of 3..=5 are read from the damaged file: its
            // tail from the damage on is unreadable as far as ids below the copy's name go.
            expected.retain(|&id| id != 2);
            assert_eq!(seen, expected, "{format:?}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_second_open_of_a_directory_is_refused_with_the_holders_pid() {
        let dir = temp_dir("lock");
        let (store, _) = load(&dir, 1 << 20);
        let err = replay(&dir, 1 << 20).err().expect("the directory is locked");
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        drop(store);
        replay(&dir, 1 << 20).expect("free again once the first store is gone");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_last_component_of_the_directory_is_created() {
        let base = temp_dir("create");
        let nested = base.join("missing").join("history");
        let err = replay(&nested, 1 << 20).err().expect("a missing parent is refused").to_string();
        assert!(err.contains(&nested.display().to_string()) && err.contains("parent"), "{err}");
        assert!(!base.exists(), "nothing was created");
        fs::create_dir(&base).unwrap();
        let file = base.join("file");
        fs::write(&file, b"").unwrap();
        let err = replay(&file, 1 << 20).err().expect("a file is refused").to_string();
        assert!(err.contains("not a directory") && err.contains(&file.display().to_string()), "{err}");
        let err = replay(Path::new(""), 1 << 20).err().expect("an empty path is refused").to_string();
        assert!(err.contains("empty"), "{err}");
        replay(&base.join("history"), 1 << 20).expect("the last component is created");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn when_every_event_has_expired_the_active_segment_goes_too() {
        let dir = temp_dir("expire");
        let (mut store, _) = load(&dir, 1 << 20);
        for id in 1..=3 {
            store.append(&record(id, "x")).unwrap();
        }
        store.commit().unwrap();
        store.retain(Some(3));
        assert_eq!(segment_files(&dir).len(), 1, "event 3 still held: nothing goes");
        store.retain(None);
        let files = segment_files(&dir);
        assert_eq!(files.len(), 1);
        assert_eq!(fs::metadata(&files[0]).unwrap().len(), 0, "no expired record left on disk");
        store.append(&record(4, "later")).unwrap();
        store.commit().unwrap();
        drop(store);
        let (store, seen) = replay(&dir, 1 << 20).unwrap();
        assert_eq!(seen, vec![4]);
        assert_eq!(store.next_id_floor(), 5);
        drop(store);
        let (mut store, _) = load(&dir, 1 << 20);
        store.retain(None);
        drop(store);
        let (store, seen) = replay(&dir, 1 << 20).unwrap();
        assert!(seen.is_empty());
        assert_eq!(store.next_id_floor(), 5, "ids never go back below what was given out");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fsync_modes_parse() {
        assert_eq!("always".parse::<Fsync>().unwrap(), Fsync::Always);
        assert_eq!("batch".parse::<Fsync>().unwrap(), Fsync::Batch);
        assert_eq!("never".parse::<Fsync>().unwrap(), Fsync::Never);
        assert!("sometimes".parse::<Fsync>().is_err());
    }
}
