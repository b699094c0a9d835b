//! The service's own metrics (per table and per client: requests, rows, errors, requests
//! in flight, latency from the server's view), read into the stats a control client gets
//! ([`engram_client::stats`], which also renders their Prometheus text).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engram_client::stats::{ClientStats, LATENCY_BUCKETS_S, RequestStats};
use engram_store::metrics::{LatencySummary, new_hist, record_ns, summary};
use hdrhistogram::Histogram;

/// Requests served for one table or one client.
#[derive(Debug)]
pub struct Counters {
    requests: AtomicU64,
    rows: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency: Mutex::new(new_hist()),
        }
    }
}

impl Counters {
    /// A request was taken off the ring.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A started request whose client went away.
    pub fn abandoned(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A started request completed with `rows` rows in `ns` nanoseconds (`ok`: without error).
    pub fn finished(&self, rows: usize, ns: u64, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.latency.lock() {
            record_ns(&mut h, ns);
        }
    }

    fn view(&self) -> RequestStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (latency, buckets, sum_s) = match self.latency.lock() {
            Ok(h) => (
                summary("request", &h),
                LATENCY_BUCKETS_S
                    .iter()
                    .map(|&le| h.count_between(0, (le * 1e9) as u64))
                    .collect(),
                h.mean() * h.len() as f64 / 1e9,
            ),
            Err(_) => (LatencySummary::default(), Vec::new(), 0.0),
        };
        RequestStats {
            requests: g(&self.requests),
            rows: g(&self.rows),
            errors: g(&self.errors),
            in_flight: g(&self.in_flight),
            latency,
            buckets,
            latency_sum_s: sum_s,
        }
    }
}

/// One attached client.
#[derive(Debug)]
pub struct ClientMetrics {
    /// The client's number.
    pub id: u64,
    /// Its user id.
    pub uid: u32,
    /// Its process id.
    pub pid: i32,
    /// The table it is attached to.
    pub table: String,
    /// Its requests.
    pub counters: Counters,
}

/// Everything the service counts.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused.
    pub refused: AtomicU64,
    /// Clients disconnected for breaking the protocol.
    pub violations: AtomicU64,
    /// Table reloads.
    pub reloads: AtomicU64,
    clients: Mutex<Vec<Arc<ClientMetrics>>>,
}

impl ServiceMetrics {
    /// Counts an attached client.
    pub fn add_client(&self, c: Arc<ClientMetrics>) {
        if let Ok(mut v) = self.clients.lock() {
            v.push(c);
        }
    }

    /// Forgets a client that detached.
    pub fn remove_client(&self, id: u64) {
        if let Ok(mut v) = self.clients.lock() {
            v.retain(|c| c.id != id);
        }
    }

    /// The clients attached now.
    pub fn clients(&self) -> Vec<Arc<ClientMetrics>> {
        self.clients.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// What a table's counters show a control client.
pub fn table_view(counters: &Counters) -> RequestStats {
    counters.view()
}

/// What a client's counters show a control client.
pub fn client_view(c: &ClientMetrics) -> ClientStats {
    ClientStats {
        id: c.id,
        uid: c.uid,
        pid: c.pid,
        table: c.table.clone(),
        requests: c.counters.view(),
    }
}
