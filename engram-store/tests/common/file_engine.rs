//! An engine from outside the store crate for the tests: reads layer-file ranges with
//! plain `pread` when reaped.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use engram_store::reads::{Completion, Engine, EngineError, Lease, ReadReq, Staging};
use engram_store::{EngineFactory, Table};

/// Reads layer-file ranges with plain `pread` when reaped; flips one byte of read number
/// `corrupt_read` (counted across the factory's engines) when set.
#[derive(Debug)]
pub struct FileEngine {
    files: Vec<std::fs::File>,
    queued: Vec<(ReadReq, Lease)>,
    reads: Arc<AtomicU64>,
    corrupt_read: Option<u64>,
    max_in_flight: Arc<AtomicU64>,
    max_slot: Arc<AtomicU64>,
}

impl Engine for FileEngine {
    fn name(&self) -> &'static str {
        "file"
    }

    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)> {
        self.max_slot
            .fetch_max(u64::from(lease.slot()), Ordering::Relaxed);
        self.queued.push((req, lease));
        self.max_in_flight
            .fetch_max(self.queued.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn reap(
        &mut self,
        _min_complete: usize,
        _timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        for (req, mut lease) in self.queued.drain(..) {
            let n = self.reads.fetch_add(1, Ordering::Relaxed);
            let result = match self.files.get(req.file as usize) {
                Some(f) => f
                    .read_exact_at(lease.bytes_mut(), req.offset)
                    .map(|()| lease.len()),
                None => Err(std::io::Error::other("no such file")),
            };
            if self.corrupt_read == Some(n) {
                lease.bytes_mut()[0] ^= 0x40;
            }
            out.push(Completion {
                tag: req.tag,
                lease,
                result,
            });
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.queued.len()
    }
}

#[derive(Debug, Default)]
pub struct FileFactory {
    pub reads: Arc<AtomicU64>,
    pub staging_bytes: AtomicU64,
    pub corrupt_read: Option<u64>,
    /// Most reads any engine held at once.
    pub max_in_flight: Arc<AtomicU64>,
    /// Highest staging slot any read was submitted into.
    pub max_slot: Arc<AtomicU64>,
    /// Staging slots of the last engine built.
    pub staging_slots: AtomicU64,
}

impl EngineFactory for FileFactory {
    fn name(&self) -> &'static str {
        "test-files"
    }

    fn engine(
        &self,
        table: &Arc<Table>,
        staging: &Staging,
    ) -> engram_store::Result<Box<dyn Engine>> {
        self.staging_bytes
            .store(staging.iovec().iov_len as u64, Ordering::Relaxed);
        self.staging_slots
            .store(staging.depth() as u64, Ordering::Relaxed);
        let mut files = Vec::new();
        for l in 0..table.n_layers() {
            files.push(std::fs::File::open(&table.layer(l)?.path).expect("layer file"));
        }
        Ok(Box::new(FileEngine {
            files,
            queued: Vec::new(),
            reads: Arc::clone(&self.reads),
            corrupt_read: self.corrupt_read,
            max_in_flight: Arc::clone(&self.max_in_flight),
            max_slot: Arc::clone(&self.max_slot),
        }))
    }
}
