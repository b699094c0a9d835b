//! Completion slots: `max_in_flight` cells allocated at open, each carrying one request
//! from the caller that submitted it to the reactor that completes it and back. A caller
//! takes a free slot before submitting (back-pressure), waiting at most the store's
//! `slot_wait`: a caller that holds every slot itself (tickets it never waits) gets
//! [`Error::Limit`] instead of a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};

/// A finished request: its buffer, outcome and id vector (kept for the slot's next use).
#[derive(Debug)]
pub(crate) struct Done {
    pub out: AlignedBuf,
    pub result: Result<()>,
    pub ids: Vec<u64>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// The slot's id vector while it is free.
    spare_ids: Option<Vec<u64>>,
    /// The slot's lookup buffer while it is free (lookups read into it, then copy).
    spare_buf: Option<AlignedBuf>,
    done: Option<Done>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

/// The store's completion slots.
#[derive(Debug)]
pub(crate) struct Slots {
    cells: Vec<Slot>,
    /// (cells,) the [`thread_token`] of the thread that took each slot; 0 while free.
    owners: Vec<AtomicU64>,
    free_tx: Sender<usize>,
    free_rx: Receiver<usize>,
    wait: Duration,
}

/// A number naming the calling thread (never 0), for [`Slots::take`]'s "this thread holds
/// every slot" test.
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

fn lock(s: &Slot) -> MutexGuard<'_, SlotState> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slots {
    /// `n` free slots whose id vectors hold `ids_capacity` ids without growing; a free
    /// slot is waited for at most `wait`.
    pub fn new(n: usize, ids_capacity: usize, wait: Duration) -> Self {
        let (free_tx, free_rx) = bounded(n);
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            cells.push(Slot {
                state: Mutex::new(SlotState {
                    spare_ids: Some(Vec::with_capacity(ids_capacity)),
                    ..SlotState::default()
                }),
                ready: Condvar::new(),
            });
            let _ = free_tx.send(i);
        }
        Self {
            owners: (0..cells.len()).map(|_| AtomicU64::new(0)).collect(),
            cells,
            free_tx,
            free_rx,
            wait,
        }
    }

    /// Slots in all.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.free_rx.len()
    }

    /// A free slot. When none is free and the calling thread took every slot itself (it
    /// holds all the tickets: nobody else can free one), `Limit` at once; otherwise it
    /// waits for another thread's ticket at most the store's `slot_wait`.
    pub fn take(&self) -> Result<usize> {
        let me = thread_token();
        let slot = match self.free_rx.try_recv() {
            Ok(slot) => Ok(slot),
            Err(_) if self.owners.iter().all(|o| o.load(Ordering::Acquire) == me) => Err(()),
            Err(_) => self.free_rx.recv_timeout(self.wait).map_err(|_| ()),
        };
        match slot {
            Ok(slot) => {
                if let Some(o) = self.owners.get(slot) {
                    o.store(me, Ordering::Release);
                }
                Ok(slot)
            }
            Err(()) => Err(Error::Limit {
                what: "requests in flight (prefetch tickets held, lookups and slot requests \
                       running) at once; wait for a ticket before starting more",
                name: "StoreOptions::max_in_flight",
                limit: self.cells.len(),
                found: self.cells.len() + 1,
            }),
        }
    }

    /// The id vector of slot `slot`, holding `ids`.
    pub fn ids(&self, slot: usize, ids: &[u64]) -> Vec<u64> {
        let mut v = self
            .cells
            .get(slot)
            .and_then(|s| lock(s).spare_ids.take())
            .unwrap_or_default();
        v.clear();
        v.extend_from_slice(ids);
        v
    }

    /// The lookup buffer of slot `slot`, if it has one.
    pub fn take_buf(&self, slot: usize) -> Option<AlignedBuf> {
        self.cells.get(slot).and_then(|s| lock(s).spare_buf.take())
    }

    /// Keeps `buf` as the lookup buffer of slot `slot`.
    pub fn keep_buf(&self, slot: usize, buf: AlignedBuf) {
        if let Some(s) = self.cells.get(slot) {
            lock(s).spare_buf = Some(buf);
        }
    }

    /// Completes slot `slot`: wakes its waiter.
    pub fn deliver(&self, slot: usize, done: Done) {
        if let Some(s) = self.cells.get(slot) {
            lock(s).done = Some(done);
            s.ready.notify_all();
        }
    }

    /// Whether slot `slot` is complete.
    pub fn is_done(&self, slot: usize) -> bool {
        self.cells.get(slot).is_none_or(|s| lock(s).done.is_some())
    }

    /// Waits for slot `slot` to complete; returns its buffer and outcome, keeps its id
    /// vector. The slot stays taken until [`Slots::release`].
    pub fn wait(&self, slot: usize) -> (AlignedBuf, Result<()>) {
        // `slot` came from `take`: always one of ours.
        let s = &self.cells[slot];
        let mut st = lock(s);
        loop {
            if let Some(d) = st.done.take() {
                st.spare_ids = Some(d.ids);
                return (d.out, d.result);
            }
            st = s.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Frees slot `slot`, whose request was not waited for through the slot (a
    /// [`super::Request::Slot`]), keeping `ids` as its id vector.
    pub fn finish(&self, slot: usize, ids: Vec<u64>) {
        if let Some(s) = self.cells.get(slot) {
            lock(s).spare_ids = Some(ids);
        }
        self.release(slot);
    }

    /// Frees slot `slot` for the next request.
    pub fn release(&self, slot: usize) {
        if let Some(o) = self.owners.get(slot) {
            o.store(0, Ordering::Release);
        }
        let _ = self.free_tx.send(slot);
    }
}
