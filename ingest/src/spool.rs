//! The local on-disk spool: where an event waits, fsynced, while the broker
//! cannot confirm it, so ingest can still answer 202 and lose nothing.
//!
//! Layout of the spool directory:
//! - `<id>.seg`: append-only segments of frames `len u32 LE | crc32 u32 LE | payload`;
//! - `cursor`: `<segment id> <offset>` of the first frame not yet confirmed by the broker;
//! - `LOCK`: held for the life of the process, so two processes never share a spool.
//!
//! One writer thread appends and fsyncs in groups (group commit: every
//! request waiting at that moment shares one fsync). One drainer reads from
//! the cursor in order; the cursor only moves after the broker confirmed, so a
//! crash can replay a few events (the dispatcher's idempotency absorbs that)
//! but never skip one. A torn frame at the tail after a crash is cut off at
//! start-up: it was never acknowledged to the caller.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{Notify, oneshot};

const FRAME_HEADER: u64 = 8;
/// A single record larger than this is refused (an event is a few KB).
const MAX_RECORD: usize = 16 * 1024 * 1024;
const GROUP_COMMIT_MAX: usize = 1024;
/// 100 ms apart: how long `open` waits for an exiting process's lock.
const LOCK_ATTEMPTS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({pending} of {max} bytes pending)")]
    Full { pending: u64, max: u64 },
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
    #[error("spool writer has stopped")]
    Stopped,
    #[error("spool directory {0} is in use by another process")]
    Locked(PathBuf),
}

/// Position of a frame: segment id and byte offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    pending_bytes: AtomicU64,
    pending_records: AtomicU64,
    /// End of what is fsynced: the drainer never reads past it.
    committed: Mutex<Position>,
    appended: Notify,
}

struct Append {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Append>,
    _lock: Arc<File>,
}

impl Spool {
    /// Opens (or creates) the spool, recovering from a crash: cuts a torn
    /// tail frame and counts what is pending from the cursor on.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, Drain), SpoolError> {
        Self::open_with(dir, max_bytes, segment_bytes, LOCK_ATTEMPTS)
    }

    /// Opens another ingest's spool to drain it, only if nobody holds it
    /// (its ingest is gone: the kernel released its lock) and it holds
    /// segments; `None` otherwise. Nothing is waited for.
    pub fn open_stranded(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Option<(Spool, Drain)>, SpoolError> {
        if !dir.join("LOCK").exists() || list_segments(dir)?.is_empty() {
            return Ok(None);
        }
        match Self::open_with(dir, max_bytes, segment_bytes, 0) {
            Ok(opened) => Ok(Some(opened)),
            Err(SpoolError::Locked(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        lock_attempts: u32,
    ) -> Result<(Spool, Drain), SpoolError> {
        // Events hold phone numbers: only the service's user reads them.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = private()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        // A previous process on this directory may still be exiting: wait a
        // little for its lock before calling the directory taken.
        let mut attempts = 0;
        while lock.try_lock().is_err() {
            attempts += 1;
            if attempts > lock_attempts {
                return Err(SpoolError::Locked(dir.to_path_buf()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let cursor = read_cursor(dir)?;
        let mut segments = list_segments(dir)?;
        // Segments wholly before the cursor were drained before a crash.
        for &id in segments.iter().filter(|&&id| id < cursor.segment) {
            fs::remove_file(segment_path(dir, id))?;
        }
        segments.retain(|&id| id >= cursor.segment);

        let mut pending_bytes = 0;
        let mut pending_records = 0;
        for (i, &id) in segments.iter().enumerate() {
            let start = if id == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let (valid_end, records) = scan(&segment_path(dir, id), start)?;
            let len = fs::metadata(segment_path(dir, id))?.len();
            if valid_end < len {
                if i + 1 == segments.len() {
                    tracing::warn!(
                        segment = id,
                        cut = len - valid_end,
                        "spool: cutting a torn frame left by a crash"
                    );
                    let f = private().write(true).open(segment_path(dir, id))?;
                    f.set_len(valid_end)?;
                    f.sync_all()?;
                } else {
                    tracing::error!(
                        segment = id,
                        "spool: corrupt frame inside a sealed segment; the rest of it is skipped"
                    );
                }
            }
            pending_bytes += valid_end.saturating_sub(start);
            pending_records += records;
        }
        let active_id = segments.last().copied().unwrap_or(cursor.segment.max(1));
        let active_path = segment_path(dir, active_id);
        let active = private().create(true).append(true).open(&active_path)?;
        let active_len = active.metadata()?.len();
        sync_dir(dir)?;

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes,
            pending_bytes: AtomicU64::new(pending_bytes),
            pending_records: AtomicU64::new(pending_records),
            committed: Mutex::new(Position {
                segment: active_id,
                offset: active_len,
            }),
            appended: Notify::new(),
        });
        let (tx, rx) = mpsc::channel::<Append>();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    shared: writer_shared,
                    file: active,
                    segment: active_id,
                    len: active_len,
                    segment_bytes,
                };
                w.run(rx)
            })?;
        // The cursor's segment may be gone if it was fully drained and deleted.
        let start = if segments.contains(&cursor.segment) {
            cursor
        } else {
            Position {
                segment: segments.first().copied().unwrap_or(active_id),
                offset: 0,
            }
        };
        let drain = Drain {
            shared: shared.clone(),
            cursor: start,
        };
        Ok((
            Spool {
                shared,
                writer: tx,
                _lock: Arc::new(lock),
            },
            drain,
        ))
    }

    /// Appends one record; returns once it is fsynced.
    pub async fn append(&self, payload: Vec<u8>) -> Result<(), SpoolError> {
        if payload.len() > MAX_RECORD {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large",
            )));
        }
        let pending = self.shared.pending_bytes.load(Ordering::Relaxed);
        if pending + payload.len() as u64 + FRAME_HEADER > self.shared.max_bytes {
            return Err(SpoolError::Full {
                pending,
                max: self.shared.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Append { payload, reply })
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    pub fn pending_records(&self) -> u64 {
        self.shared.pending_records.load(Ordering::Relaxed)
    }

    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    segment: u64,
    len: u64,
    segment_bytes: u64,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Append>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < GROUP_COMMIT_MAX {
                match rx.try_recv() {
                    Ok(a) => group.push(a),
                    Err(_) => break,
                }
            }
            let result = self.write_group(&group);
            for a in group {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
                };
                let _ = a.reply.send(r);
            }
        }
    }

    fn write_group(&mut self, group: &[Append]) -> io::Result<()> {
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.payload.len() + 8).sum());
        for a in group {
            buf.extend_from_slice(&(a.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&a.payload).to_le_bytes());
            buf.extend_from_slice(&a.payload);
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
        {
            // Leave no half-written group behind the committed end.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        if let Ok(mut c) = self.shared.committed.lock() {
            *c = Position {
                segment: self.segment,
                offset: self.len,
            };
        }
        self.shared
            .pending_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.shared
            .pending_records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        self.shared.appended.notify_one();
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        let file = private()
            .create(true)
            .append(true)
            .open(segment_path(&self.shared.dir, next))?;
        sync_dir(&self.shared.dir)?;
        self.file = file;
        self.segment = next;
        self.len = 0;
        Ok(())
    }
}

/// The single reader of the spool, in order. Owned by the drain task.
pub struct Drain {
    shared: Arc<Shared>,
    cursor: Position,
}

/// A batch read from the spool; hand it back to [`Drain::commit`] once the
/// broker confirmed every record of it.
pub struct Batch {
    pub records: Vec<Vec<u8>>,
    end: Position,
    bytes: u64,
}

impl Drain {
    pub fn pending_records(&self) -> u64 {
        self.shared.pending_records.load(Ordering::Relaxed)
    }

    /// Waits until something is appended (or the timeout passes).
    pub async fn wait_for_records(&self, timeout: std::time::Duration) {
        if self.pending_records() > 0 {
            return;
        }
        let _ = tokio::time::timeout(timeout, self.shared.appended.notified()).await;
    }

    /// Reads up to `max` records from the cursor, never past the fsynced end.
    pub fn read_batch(&mut self, max: usize) -> io::Result<Batch> {
        let committed = *self
            .shared
            .committed
            .lock()
            .map_err(|_| io::Error::other("spool state poisoned"))?;
        let mut records = Vec::new();
        let mut pos = self.cursor;
        let mut bytes = 0;
        while records.len() < max && pos < committed {
            let path = segment_path(&self.shared.dir, pos.segment);
            let limit = if pos.segment == committed.segment {
                committed.offset
            } else {
                match fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(e),
                }
            };
            if pos.offset >= limit {
                if pos.segment < committed.segment {
                    pos = Position {
                        segment: pos.segment + 1,
                        offset: 0,
                    };
                    continue;
                }
                break;
            }
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(pos.offset))?;
            let mut reader = io::BufReader::new(f.take(limit - pos.offset));
            while records.len() < max {
                match read_frame(&mut reader)? {
                    Some(payload) => {
                        let n = payload.len() as u64 + FRAME_HEADER;
                        pos.offset += n;
                        bytes += n;
                        records.push(payload);
                    }
                    None => {
                        // Clean end, or a corrupt frame in a sealed segment: move on.
                        pos.offset = limit;
                        break;
                    }
                }
            }
        }
        Ok(Batch {
            records,
            end: pos,
            bytes,
        })
    }

    /// The broker confirmed the batch: move the cursor past it, durably, and
    /// delete segments that are now wholly drained.
    pub fn commit(&mut self, batch: Batch) -> io::Result<()> {
        if batch.records.is_empty() && batch.end == self.cursor {
            return Ok(());
        }
        write_cursor(&self.shared.dir, batch.end)?;
        let old = self.cursor;
        self.cursor = batch.end;
        for id in old.segment..batch.end.segment {
            match fs::remove_file(segment_path(&self.shared.dir, id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.shared
            .pending_records
            .fetch_sub(batch.records.len() as u64, Ordering::Relaxed);
        self.shared
            .pending_bytes
            .fetch_sub(batch.bytes, Ordering::Relaxed);
        Ok(())
    }
}

fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 8];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Returns the end of the last valid frame from `start` and how many frames.
fn scan(path: &Path, start: u64) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if start >= len {
        return Ok((start.min(len), 0));
    }
    f.seek(SeekFrom::Start(start))?;
    let mut reader = io::BufReader::new(f);
    let mut end = start;
    let mut n = 0;
    while let Some(p) = read_frame(&mut reader)? {
        end += p.len() as u64 + FRAME_HEADER;
        n += 1;
    }
    Ok((end, n))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn read_cursor(dir: &Path) -> io::Result<Position> {
    match fs::read_to_string(dir.join("cursor")) {
        Ok(s) => {
            let mut parts = s.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("spool cursor file in {} is unreadable", dir.display()),
                )),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Position {
            segment: 1,
            offset: 0,
        }),
        Err(e) => Err(e),
    }
}

fn write_cursor(dir: &Path, pos: Position) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = private()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)?;
    writeln!(f, "{} {}", pos.segment, pos.offset)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Options for a spool file: created 0600 (events hold personal data).
fn private() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Spool, Drain) {
        Spool::open(dir, 1 << 20, 4096).unwrap()
    }

    #[tokio::test]
    async fn the_spool_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        let (spool, mut drain) = open(&dir);
        spool.append(b"+79161234567".to_vec()).await.unwrap();
        let batch = drain.read_batch(1).unwrap();
        drain.commit(batch).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the directory");
        let files: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() >= 2, "{files:?}");
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[tokio::test]
    async fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut drain) = open(dir.path());
        for i in 0..200u32 {
            spool
                .append(format!("event-{i:04}-{}", "x".repeat(50)).into_bytes())
                .await
                .unwrap();
        }
        assert_eq!(spool.pending_records(), 200);
        assert!(
            list_segments(dir.path()).unwrap().len() > 1,
            "should have rotated"
        );
        let mut seen = Vec::new();
        loop {
            let batch = drain.read_batch(64).unwrap();
            if batch.records.is_empty() {
                break;
            }
            seen.extend(
                batch
                    .records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r[..10]).to_string()),
            );
            drain.commit(batch).unwrap();
        }
        let expected: Vec<String> = (0..200).map(|i| format!("event-{i:04}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(spool.pending_records(), 0);
        assert_eq!(spool.pending_bytes(), 0);
        assert!(
            list_segments(dir.path()).unwrap().len() <= 1,
            "drained segments are deleted"
        );
    }

    #[tokio::test]
    async fn uncommitted_records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, mut drain) = open(dir.path());
            for i in 0..10u8 {
                spool.append(vec![i; 100]).await.unwrap();
            }
            let first = drain.read_batch(4).unwrap();
            drain.commit(first).unwrap();
            // Read but never confirmed: must come back.
            let _lost_in_flight = drain.read_batch(3).unwrap();
        }
        let (spool, mut drain) = open(dir.path());
        assert_eq!(spool.pending_records(), 6);
        let batch = drain.read_batch(100).unwrap();
        let firsts: Vec<u8> = batch.records.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![4, 5, 6, 7, 8, 9]);
    }

    #[tokio::test]
    async fn a_torn_tail_frame_is_cut_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _drain) = open(dir.path());
            spool.append(b"complete".to_vec()).await.unwrap();
        }
        let seg = segment_path(dir.path(), list_segments(dir.path()).unwrap()[0]);
        let mut f = private().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap(); // half a header, as a crash mid-write leaves it
        drop(f);
        let (spool, mut drain) = open(dir.path());
        assert_eq!(spool.pending_records(), 1);
        spool.append(b"after".to_vec()).await.unwrap();
        let batch = drain.read_batch(10).unwrap();
        assert_eq!(batch.records, vec![b"complete".to_vec(), b"after".to_vec()]);
    }

    #[tokio::test]
    async fn full_spool_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _drain) = Spool::open(dir.path(), 8192, 4096).unwrap();
        let mut refused = false;
        for _ in 0..20 {
            if let Err(SpoolError::Full { .. }) = spool.append(vec![0; 1000]).await {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(spool.pending_bytes() <= 8192);
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        assert!(matches!(
            Spool::open(dir.path(), 1 << 20, 4096),
            Err(SpoolError::Locked(_))
        ));
    }
}
