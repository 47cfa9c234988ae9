//! Durable history: events appended to segment files of checksummed records, read back on start.
//!
//! A record is `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, the payload holding
//! what re-encodes the event: id, topics, type, retry and data. Segments are named after the lowest id
//! they may hold (`00000001795654479027289.seg`), so names sort in id order, rolled at a size, and deleted whole once every event in them has
//! left the in-memory history. On start every segment is read in order; a torn or corrupt record (short
//! read, bad checksum, ids out of order) is cut off there and logged, never served.
//!
//! The store only writes and syncs; when a publish may be answered is the event loop's decision,
//! driven by [`Fsync`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use log::{error, info, warn};

use crate::error::Error;

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

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: u64,
    /// Its topics.
    pub topics: Vec<String>,
    /// Its `event:` type.
    pub event_type: Option<String>,
    /// Its `retry:` field.
    pub retry_ms: Option<u64>,
    /// Its data.
    pub data: String,
}

const HEADER_BYTES: usize = 8;
/// Records larger than this are treated as corruption when reading (the body cap is far below).
const MAX_RECORD_BYTES: usize = 1 << 30;
const SEGMENT_SUFFIX: &str = ".seg";

/// Appends `record` to `out` in the on-disk format.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(&record.id.to_le_bytes());
    out.extend_from_slice(&(record.topics.len() as u16).to_le_bytes());
    for topic in &record.topics {
        // Topics are at most 128 bytes and event types too (validated before they get here).
        out.push(topic.len() as u8);
        out.extend_from_slice(topic.as_bytes());
    }
    let event_type = record.event_type.as_deref().unwrap_or("");
    out.push(event_type.len() as u8);
    out.extend_from_slice(event_type.as_bytes());
    match record.retry_ms {
        Some(ms) => {
            out.push(1);
            out.extend_from_slice(&ms.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
    out.extend_from_slice(record.data.as_bytes());
    let payload_len = (out.len() - start - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
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

/// Decodes the record at the front of `bytes`; returns it and its length on disk.
pub fn decode_record(bytes: &[u8]) -> Result<(Record, usize), RecordError> {
    let header = bytes.get(..HEADER_BYTES).ok_or(RecordError::Short)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return Err(RecordError::Checksum);
    }
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + len).ok_or(RecordError::Short)?;
    if crc32fast::hash(payload) != crc {
        return Err(RecordError::Checksum);
    }
    let mut reader = Reader(payload);
    let record = (|| {
        let id = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let topic_count = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
        let mut topics = Vec::with_capacity(usize::from(topic_count));
        for _ in 0..topic_count {
            let len = usize::from(reader.take(1)?[0]);
            topics.push(String::from_utf8(reader.take(len)?.to_vec()).ok()?);
        }
        let type_len = usize::from(reader.take(1)?[0]);
        let event_type = String::from_utf8(reader.take(type_len)?.to_vec()).ok()?;
        let retry_ms = match reader.take(1)?[0] {
            0 => None,
            1 => Some(u64::from_le_bytes(reader.take(8)?.try_into().ok()?)),
            _ => return None,
        };
        let data_len = u32::from_le_bytes(reader.take(4)?.try_into().ok()?) as usize;
        let data = String::from_utf8(reader.take(data_len)?.to_vec()).ok()?;
        if !reader.0.is_empty() || topics.is_empty() {
            return None;
        }
        Some(Record {
            id,
            topics,
            event_type: (!event_type.is_empty()).then_some(event_type),
            retry_ms,
            data,
        })
    })()
    .ok_or(RecordError::Malformed)?;
    Ok((record, HEADER_BYTES + len))
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
}

struct Segment {
    path: PathBuf,
    /// Highest id in the segment (0 when it holds none yet).
    last_id: u64,
}

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
}

impl Store {
    /// Opens (creating if needed) the history in `dir`, calling `on_record` with every intact record
    /// in id order; damage is cut off and logged.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        segment_limit: u64,
        mut on_record: impl FnMut(Record),
    ) -> Result<Store, Error> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating the data directory {}", dir.display()), e))?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing the data directory {}", dir.display()), e))?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let first: u64 = name.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut last_id = 0;
        let mut loaded = 0u64;
        for (_, path) in names {
            let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut at = 0;
            let mut segment_last = 0;
            let mut damage = None;
            while at < bytes.len() {
                match decode_record(&bytes[at..]) {
                    Ok((record, used)) if record.id > last_id => {
                        at += used;
                        last_id = record.id;
                        segment_last = record.id;
                        loaded += 1;
                        on_record(record);
                    }
                    Ok(_) => {
                        damage = Some("ids out of order".to_string());
                        break;
                    }
                    Err(e) => {
                        damage = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(what) = damage {
                let cut = bytes.len() - at;
                warn!("{}: {what} at byte {at}; cutting off the last {cut} bytes", path.display());
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(format!("opening {} to repair it", path.display()), e))?;
                file.set_len(at as u64)
                    .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
                file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
            }
            if segment_last == 0 {
                // Nothing intact in it: it only holds damage.
                let _ = fs::remove_file(&path);
                continue;
            }
            segments.push_back(Segment { path, last_id: segment_last });
        }
        if loaded > 0 {
            info!("loaded {loaded} events from {} (newest id {last_id})", dir.display());
        }
        let path = match segments.back() {
            Some(segment) => segment.path.clone(),
            None => {
                let path = segment_path(dir, last_id + 1);
                segments.push_back(Segment { path: path.clone(), last_id: 0 });
                path
            }
        };
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
        })
    }

    /// The sync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Writes a record (and, with [`Fsync::Always`], syncs it). On failure the segment is cut back to
    /// its last whole record, so a later append after the disk has room again starts cleanly.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        if self.len >= self.segment_limit && self.segments.back().is_some_and(|s| s.last_id > 0) {
            self.roll(record.id)?;
        }
        self.buf.clear();
        encode_record(record, &mut self.buf);
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
    /// in-memory history still holds; `None` when it holds none). The active segment stays.
    pub fn retain(&mut self, oldest_kept: Option<u64>) {
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("len > 1");
            if oldest_kept.is_some_and(|oldest| front.last_id >= oldest) {
                break;
            }
            let segment = self.segments.pop_front().expect("len > 1");
            if let Err(e) = fs::remove_file(&segment.path) {
                warn!("could not delete {}: {e}", segment.path.display());
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

    fn record(id: u64, data: &str) -> Record {
        Record {
            id,
            topics: vec!["a".into(), "b/c".into()],
            event_type: Some("t".into()),
            retry_ms: Some(5),
            data: data.into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ssed-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn load(dir: &Path, limit: u64) -> (Store, Vec<Record>) {
        let mut records = Vec::new();
        let store = Store::open(dir, Fsync::Batch, limit, |r| records.push(r)).unwrap();
        (store, records)
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        let plain =
            Record { id: 1, topics: vec!["x".into()], event_type: None, retry_ms: None, data: String::new() };
        encode_record(&record(7, "héllo\nworld"), &mut bytes);
        encode_record(&plain, &mut bytes);
        let (first, used) = decode_record(&bytes).unwrap();
        assert_eq!(first, record(7, "héllo\nworld"));
        assert_eq!(decode_record(&bytes[used..]).unwrap().0, plain);
    }

    #[test]
    fn damage_is_detected() {
        let mut bytes = Vec::new();
        encode_record(&record(7, "data"), &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut]).unwrap_err(), RecordError::Short, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode_record(&flipped).is_err(), "flip at {at} went unnoticed");
        }
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
        let path = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
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

    #[test]
    fn fsync_modes_parse() {
        assert_eq!("always".parse::<Fsync>().unwrap(), Fsync::Always);
        assert_eq!("batch".parse::<Fsync>().unwrap(), Fsync::Batch);
        assert_eq!("never".parse::<Fsync>().unwrap(), Fsync::Never);
        assert!("sometimes".parse::<Fsync>().is_err());
    }
}
