//! What a control client gets back from `Request::Stats`: the service's counters per table
//! and per client, with each table's store snapshot, and their Prometheus text
//! (`engram_service_*` plus each table's `engram_store_*`). The server fills them
//! (`engram-server`'s `metrics`); `engram stats --service` prints them.

use std::fmt::Write as _;

use engram_store::StatsSnapshot;
use engram_store::metrics::{LatencySummary, prometheus_label, prometheus_text};
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 1e-1, 1.0,
];

/// Requests, rows, errors and latency of a table or a client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestStats {
    /// Requests completed.
    pub requests: u64,
    /// Rows requested by them.
    pub rows: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests taken off the ring and not yet completed.
    pub in_flight: u64,
    /// From the server taking the request off the ring to posting its completion.
    pub latency: LatencySummary,
    /// Requests at most each of [`LATENCY_BUCKETS_S`] (cumulative).
    pub buckets: Vec<u64>,
    /// Sum of the request latencies, in seconds (Prometheus `_sum`).
    pub latency_sum_s: f64,
}

/// One served table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableStats {
    /// The table's name.
    pub name: String,
    /// The table's directory.
    pub path: String,
    /// The store backend serving it.
    pub backend: String,
    /// Bumped by every reload that changed the table's shape.
    pub epoch: u64,
    /// Clients attached to it now.
    pub clients: u64,
    /// Requests served from it.
    pub requests: RequestStats,
    /// The table's store (cache, I/O, tiers); counters restart at a reload.
    pub store: StatsSnapshot,
}

/// One attached client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientStats {
    /// The client's number on the server.
    pub id: u64,
    /// The client process's user id.
    pub uid: u32,
    /// The client process's id.
    pub pid: i32,
    /// The table it is attached to.
    pub table: String,
    /// Requests it made.
    pub requests: RequestStats,
}

/// What `engram stats --service` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceStats {
    /// The server's Unix socket.
    pub socket: String,
    /// Clients attached now.
    pub clients: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused (credentials, limits, unknown table).
    pub refused_total: u64,
    /// Clients disconnected for breaking the protocol.
    pub protocol_violations_total: u64,
    /// Table reloads (SIGHUP or control command).
    pub reloads_total: u64,
    /// Every served table.
    pub tables: Vec<TableStats>,
    /// Every attached client.
    pub client_list: Vec<ClientStats>,
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP engram_service_{name} {help}");
    let _ = writeln!(o, "# TYPE engram_service_{name} {kind}");
}

fn request_families(o: &mut String, prefix: &str, items: &[(String, &RequestStats)]) {
    type Field = fn(&RequestStats) -> u64;
    let plain: [(&str, &str, &str, Field); 4] = [
        ("requests_total", "counter", "Requests served.", |r| {
            r.requests
        }),
        ("rows_total", "counter", "Rows requested.", |r| r.rows),
        ("errors_total", "counter", "Requests that failed.", |r| {
            r.errors
        }),
        (
            "in_flight_requests",
            "gauge",
            "Requests taken off the ring and not yet completed (the I/O queue depth the service adds).",
            |r| r.in_flight,
        ),
    ];
    for (name, kind, help, field) in plain {
        family(o, &format!("{prefix}_{name}"), kind, help);
        for (labels, r) in items {
            let _ = writeln!(o, "engram_service_{prefix}_{name}{{{labels}}} {}", field(r));
        }
    }
    let name = format!("{prefix}_request_duration_seconds");
    family(
        o,
        &name,
        "histogram",
        "Request latency inside the server (ring to completion).",
    );
    for (labels, r) in items {
        for (le, n) in LATENCY_BUCKETS_S.iter().zip(&r.buckets) {
            let _ = writeln!(
                o,
                "engram_service_{name}_bucket{{{labels},le=\"{le:e}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "engram_service_{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            r.latency.count
        );
        let _ = writeln!(
            o,
            "engram_service_{name}_sum{{{labels}}} {:e}",
            r.latency_sum_s
        );
        let _ = writeln!(
            o,
            "engram_service_{name}_count{{{labels}}} {}",
            r.latency.count
        );
    }
}

impl ServiceStats {
    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut o = String::new();
        type Field = fn(&ServiceStats) -> u64;
        let top: [(&str, &str, &str, Field); 5] = [
            ("clients", "gauge", "Clients attached.", |s| s.clients),
            (
                "connections_total",
                "counter",
                "Connections accepted.",
                |s| s.connections_total,
            ),
            (
                "refused_total",
                "counter",
                "Connections refused (credentials, limits, unknown table).",
                |s| s.refused_total,
            ),
            (
                "protocol_violations_total",
                "counter",
                "Clients disconnected for breaking the protocol.",
                |s| s.protocol_violations_total,
            ),
            (
                "reloads_total",
                "counter",
                "Table reloads (SIGHUP or control command).",
                |s| s.reloads_total,
            ),
        ];
        for (name, kind, help, field) in top {
            family(&mut o, name, kind, help);
            let _ = writeln!(o, "engram_service_{name} {}", field(self));
        }
        let table_label = |t: &TableStats| format!("table=\"{}\"", prometheus_label(&t.name));
        family(
            &mut o,
            "table_clients",
            "gauge",
            "Clients attached to the table.",
        );
        for t in &self.tables {
            let _ = writeln!(
                o,
                "engram_service_table_clients{{{}}} {}",
                table_label(t),
                t.clients
            );
        }
        let tables: Vec<_> = self
            .tables
            .iter()
            .map(|t| (table_label(t), &t.requests))
            .collect();
        request_families(&mut o, "table", &tables);
        let clients: Vec<_> = self
            .client_list
            .iter()
            .map(|c| {
                (
                    format!(
                        "client=\"{}\",uid=\"{}\",pid=\"{}\",table=\"{}\"",
                        c.id,
                        c.uid,
                        c.pid,
                        prometheus_label(&c.table)
                    ),
                    &c.requests,
                )
            })
            .collect();
        request_families(&mut o, "client", &clients);
        let labels: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{},", table_label(t)))
            .collect();
        let items: Vec<(&str, &StatsSnapshot)> = labels
            .iter()
            .map(String::as_str)
            .zip(self.tables.iter().map(|t| &t.store))
            .collect();
        prometheus_text(&items, &mut o);
        o
    }
}
