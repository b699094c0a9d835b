//! The store's read engine on Mooncake: each reader's engine turns the driver's reads of
//! layer-file ranges into ranged gets of chunk objects, straight into the reader's staging
//! slots (registered with the client), one `get_into_ranges` call per reap, each chunk key
//! once per call with all its ranges. The driver verifies every block against the table's
//! checksums, so a corrupt object is a checksum error and a missing one an I/O error naming
//! the file, offset and key; never a wrong row.
//!
//! Calls run on one worker thread per engine, which owns the leases of the reads it is
//! serving (the staging contract, rule 3: the memory outlives them, and nothing else
//! touches a slot while Mooncake may write it). A batch that takes longer than the
//! configured timeout breaks the engine with the reason instead of hanging the caller.
//! The staging allocation is unregistered by the worker after its last call and before it
//! drops the last leases it holds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use engram_store::reads::{Completion, Engine, EngineError, Lease, ReadReq, Staging};
use engram_store::{EngineFactory, Table};

use crate::client::{Client, RangedGet};
use crate::error::{Error, Result, code_name};
use crate::keys::{Descriptor, MAX_DESCRIPTOR_BYTES, TableKeys, pieces};

/// The backend name the store reports.
pub const BACKEND_NAME: &str = "mooncake";

/// Builds the Mooncake engine of each reader of one published table.
#[derive(Debug)]
pub struct MooncakeFactory {
    client: Arc<Client>,
    keys: TableKeys,
    descriptor: Descriptor,
    timeout: Duration,
}

impl MooncakeFactory {
    /// Checks that `table` (this exact version) is published on the cluster `client` talks
    /// to: its descriptor exists, is complete, and lists the table's layer files.
    pub fn new(client: Arc<Client>, table: &Table) -> Result<Self> {
        let keys = TableKeys::of(table.manifest())?;
        let bytes = client
            .get_bytes(&keys.descriptor(), MAX_DESCRIPTOR_BYTES)?
            .ok_or_else(|| Error::NotPublished {
                prefix: keys.prefix.clone(),
                reason: if crate::skeleton::is_skeleton(table.dir()) {
                    // A skeleton has no rows to publish: the full table must be.
                    format!(
                        "no descriptor {}: {} is a skeleton of a table that is not published \
                         on {} (unpublished since, or another cluster); publish the full table \
                         from a host that has it (`engram publish FULL_TABLE --mooncake {}`), \
                         then read this skeleton again",
                        keys.descriptor(),
                        table.dir().display(),
                        client.config().master,
                        client.config().master
                    )
                } else {
                    format!(
                        "no descriptor {} (publish it with `engram publish {} --mooncake {}`)",
                        keys.descriptor(),
                        table.dir().display(),
                        client.config().master
                    )
                },
            })?;
        let descriptor = Descriptor::parse(&bytes, &keys)?;
        descriptor.check_manifest(table.manifest(), &keys)?;
        let timeout = client.config().timeout;
        Ok(Self {
            client,
            keys,
            descriptor,
            timeout,
        })
    }

    /// The object keys of the publication this factory's engines read.
    pub fn keys(&self) -> &TableKeys {
        &self.keys
    }

    /// The publication descriptor read when the factory was made (chunking, files).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
}

fn store_error(e: Error) -> engram_store::Error {
    engram_store::Error::Unavailable {
        what: "Mooncake",
        reason: e.to_string(),
    }
}

impl EngineFactory for MooncakeFactory {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn engine(
        &self,
        _table: &Arc<Table>,
        staging: &Staging,
    ) -> engram_store::Result<Box<dyn Engine>> {
        let iov = staging.iovec();
        let base = iov.iov_base as usize;
        // SAFETY: the staging area is one allocation of `iov_len` bytes owned by the
        // store for the engine's life; the engine unregisters it before it is freed (on
        // drop), and staging leases keep readers off a range while a read fills it.
        #[allow(unsafe_code)]
        unsafe { self.client.register(base, iov.iov_len) }.map_err(store_error)?;
        let (jobs_tx, jobs_rx) = unbounded::<Vec<(ReadReq, Lease)>>();
        let (done_tx, done_rx) = unbounded::<Vec<Completion>>();
        let (exit_tx, exit_rx) = bounded::<()>(1);
        let worker = Worker {
            client: Arc::clone(&self.client),
            keys: self.keys.clone(),
            chunk_bytes: self.descriptor.chunk_bytes,
            n_files: self.descriptor.files.len(),
            base,
            staging_bytes: iov.iov_len,
        };
        let handle = std::thread::Builder::new()
            .name("engram-mooncake".into())
            .spawn(move || worker.run(&jobs_rx, &done_tx, &exit_tx))
            .map_err(|e| engram_store::Error::Unavailable {
                what: "Mooncake worker thread",
                reason: e.to_string(),
            });
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                // Nothing was read into the staging memory: unregister it now.
                // SAFETY: `base` was registered above and no transfer into it was started.
                #[allow(unsafe_code)]
                let _ = unsafe { self.client.unregister(base) };
                return Err(e);
            }
        };
        Ok(Box::new(MooncakeEngine {
            jobs: Some(jobs_tx),
            done: done_rx,
            exited: exit_rx,
            queued: Vec::with_capacity(staging.depth()),
            in_flight: 0,
            sent: VecDeque::new(),
            timeout: self.timeout,
            master: self.client.config().master.clone(),
            worker: Some(handle),
        }))
    }
}

/// One reader's engine.
#[derive(Debug)]
pub struct MooncakeEngine {
    jobs: Option<Sender<Vec<(ReadReq, Lease)>>>,
    done: Receiver<Vec<Completion>>,
    exited: Receiver<()>,
    /// Submitted, not yet sent to the worker.
    queued: Vec<(ReadReq, Lease)>,
    /// Reads sent to the worker and not yet returned.
    in_flight: usize,
    /// (jobs in flight,) when each was sent and how many reads it has, oldest first
    sent: VecDeque<(Instant, usize)>,
    timeout: Duration,
    master: String,
    worker: Option<JoinHandle<()>>,
}

impl MooncakeEngine {
    fn take_done(&mut self, batch: Vec<Completion>, out: &mut Vec<Completion>) -> usize {
        let n = batch.len();
        self.in_flight = self.in_flight.saturating_sub(n);
        self.sent.pop_front();
        out.extend(batch);
        n
    }
}

impl Engine for MooncakeEngine {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)> {
        self.queued.push((req, lease));
        Ok(())
    }

    fn reap(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        if !self.queued.is_empty() {
            let job = std::mem::take(&mut self.queued);
            let n = job.len();
            let Some(tx) = &self.jobs else {
                return Err(EngineError::Broken("the Mooncake engine is closed".into()));
            };
            if tx.send(job).is_err() {
                return Err(EngineError::Broken(
                    "the Mooncake worker thread has stopped".into(),
                ));
            }
            self.in_flight += n;
            self.sent.push_back((Instant::now(), n));
        }
        let mut got = 0;
        while let Ok(batch) = self.done.try_recv() {
            got += self.take_done(batch, out);
        }
        let caller_deadline = timeout.map(|t| Instant::now() + t);
        while got < min_complete && self.in_flight > 0 {
            let Some(&(oldest, reads)) = self.sent.front() else {
                break;
            };
            let broken_at = oldest + self.timeout;
            let deadline = caller_deadline.map_or(broken_at, |d| d.min(broken_at));
            match self.done.recv_deadline(deadline) {
                Ok(batch) => got += self.take_done(batch, out),
                Err(RecvTimeoutError::Timeout) if Instant::now() >= broken_at => {
                    return Err(EngineError::Broken(format!(
                        "Mooncake at {} did not complete a get of {reads} reads within {:?}",
                        self.master, self.timeout
                    )));
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Broken(
                        "the Mooncake worker thread has stopped".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.queued.len()
    }
}

impl Drop for MooncakeEngine {
    fn drop(&mut self) {
        // Queued reads were never handed to Mooncake: their leases just go back.
        self.queued.clear();
        // Closing the job channel ends the worker after its current call; it unregisters
        // the staging memory before dropping the leases of that call. A call stuck past
        // the timeout is left to finish on its own (its leases keep the memory alive).
        self.jobs = None;
        match self.exited.recv_timeout(self.timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(h) = self.worker.take() {
                    let _ = h.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(target: "engram_mooncake", "a Mooncake call is still running after {:?}; leaving it to finish", self.timeout);
            }
        }
    }
}

/// The state of one engine's worker thread.
struct Worker {
    client: Arc<Client>,
    keys: TableKeys,
    chunk_bytes: u64,
    n_files: usize,
    /// The registered staging allocation.
    base: usize,
    staging_bytes: usize,
}

impl Worker {
    fn run(
        self,
        jobs: &Receiver<Vec<(ReadReq, Lease)>>,
        done: &Sender<Vec<Completion>>,
        exit: &Sender<()>,
    ) {
        let mut get = RangedGet::default();
        let mut index: HashMap<(u32, u64), usize> = HashMap::new();
        // (ranges,) read index, key index, range index within the key
        let mut owners: Vec<(usize, usize, usize)> = Vec::new();
        let mut orphans = Vec::new();
        while let Ok(mut reads) = jobs.recv() {
            let results = self.serve(&mut reads, &mut get, &mut index, &mut owners);
            let completions: Vec<Completion> = reads
                .into_iter()
                .zip(results)
                .map(|((req, lease), result)| Completion {
                    tag: req.tag,
                    lease,
                    result,
                })
                .collect();
            if let Err(e) = done.send(completions) {
                // The engine is gone; drop these leases only after unregistering.
                orphans = e.into_inner();
                break;
            }
        }
        // No call into the staging memory is running now.
        // SAFETY: `self.base` was registered when the engine was made; no transfer runs.
        #[allow(unsafe_code)]
        let r = unsafe { self.client.unregister(self.base) };
        if let Err(e) = r {
            tracing::debug!(target: "engram_mooncake", "unregister: {e}");
        }
        drop(orphans);
        let _ = exit.send(());
    }

    /// Reads every request of one job with one ranged get; the result of each read.
    fn serve(
        &self,
        reads: &mut [(ReadReq, Lease)],
        get: &mut RangedGet,
        index: &mut HashMap<(u32, u64), usize>,
        owners: &mut Vec<(usize, usize, usize)>,
    ) -> Vec<std::io::Result<usize>> {
        get.clear();
        index.clear();
        owners.clear();
        let mut results: Vec<std::io::Result<usize>> =
            reads.iter().map(|(_, l)| Ok(l.len())).collect();
        for (i, (req, lease)) in reads.iter_mut().enumerate() {
            if req.file as usize >= self.n_files {
                results[i] = Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "file index {} is not published on Mooncake (only layer files are; \
                         records are read locally or not at all)",
                        req.file
                    ),
                ));
                continue;
            }
            // The lease's extent [ptr, ptr + len) lies inside the staging allocation
            // (engram_store::reads::staging, rule 1); its offset from the registered base is
            // where Mooncake writes.
            let dst0 = (lease.as_mut_ptr() as usize).wrapping_sub(self.base);
            debug_assert!(dst0 + lease.len() <= self.staging_bytes);
            for p in pieces(req.offset, lease.len() as u64, self.chunk_bytes) {
                let k = *index.entry((req.file, p.chunk)).or_insert_with(|| {
                    get.keys.push(self.keys.chunk(req.file, p.chunk));
                    get.dst.push(Vec::new());
                    get.src.push(Vec::new());
                    get.len.push(Vec::new());
                    get.keys.len() - 1
                });
                get.dst[k].push(dst0 as u64 + p.at);
                get.src[k].push(p.src);
                get.len[k].push(p.len);
                owners.push((i, k, get.dst[k].len() - 1));
            }
        }
        if get.keys.is_empty() {
            return results;
        }
        // SAFETY: `self.base` is the registered staging area; every range of `get` lies
        // inside a lease this batch holds (built above), so nothing else touches it
        // until the call returns.
        #[allow(unsafe_code)]
        let got = unsafe { self.client.get_ranges(self.base, get) };
        match got {
            Ok(r) => {
                for &(i, k, j) in owners.iter() {
                    let want = get.len[k][j];
                    let got = r.get(k).and_then(|v| v.get(j)).copied().unwrap_or(-1);
                    if got == want as i64 || results[i].is_err() {
                        continue;
                    }
                    let kind = match got {
                        crate::error::OBJECT_NOT_FOUND => std::io::ErrorKind::NotFound,
                        g if g >= 0 => std::io::ErrorKind::UnexpectedEof,
                        _ => std::io::ErrorKind::Other,
                    };
                    results[i] = Err(std::io::Error::new(
                        kind,
                        format!(
                            "Mooncake get of {} bytes {}..{}: {}",
                            get.keys[k],
                            get.src[k][j],
                            get.src[k][j] + want,
                            if got >= 0 {
                                format!("{got} of {want} bytes")
                            } else {
                                format!("error {got} ({})", code_name(got))
                            }
                        ),
                    ));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for r in results.iter_mut() {
                    *r = Err(std::io::Error::other(why.clone()));
                }
            }
        }
        results
    }
}
