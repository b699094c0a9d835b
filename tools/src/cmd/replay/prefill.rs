//! `engram replay --prefill TOKENS`: prompts of held-out text replayed as chunked prefill.
//!
//! Per chunk, the rows of every position of every Engram layer are hashed, deduplicated
//! and requested as one ticket per layer (the store reads them at its full queue depth);
//! with the pipeline on, chunk k + 1's rows are requested when chunk k starts computing.
//! A chunk's compute is simulated at `--prefill-rate`; Engram layer j needs the chunk's
//! rows `layer id / --model-layers` of the way into it. Time to first token (TTFT) is the
//! end of the prompt's last chunk; the resident run is the same chunks with every row ready
//! (its TTFT is the compute alone).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use engram_kernels::hash::HashOutput;
use engram_store::{AlignedBuf, Store, Ticket};

use super::floor::{self, FioRuns};
use super::{Args, Inputs};

/// Default chunk: the 16K-token prefill chunk of V4.1 traffic that ENGRAM-SPEC.md section
/// 16 reports.
pub const DEFAULT_CHUNK: usize = 16_384;
/// Default prefill compute rate (tokens/s): 73.7k input tokens/s per H800 node during
/// prefill, DeepSeek-V3/R1 inference system overview (DeepSeek Open Infra, 2025-03-01). No
/// V4.1 prefill figure is published; this is the closest DeepSeek one.
pub const DEFAULT_PREFILL_RATE: f64 = 73_700.0;
/// Longest prompt, in tokens.
pub const MAX_PREFILL_TOKENS: usize = 1 << 22;
/// Largest chunk, in tokens (its rows must fit one store batch).
pub const MAX_CHUNK: usize = 1 << 18;
/// How often the replay thread checks whether the requested rows have arrived while it
/// waits (the resolution of `read_us`).
const POLL: Duration = Duration::from_micros(100);

/// The checked prefill flags.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Tokens per prompt.
    pub tokens: usize,
    /// Tokens per chunk (at most `tokens`).
    pub chunk: usize,
    /// Simulated compute, tokens per second.
    pub rate: f64,
    /// Prompts replayed one after another.
    pub prompts: usize,
    /// Whether chunk k + 1's rows are requested while chunk k computes.
    pub pipeline: bool,
}

impl Plan {
    /// The plan `--prefill` asks for, if any; bad values are errors.
    pub fn from_args(args: &Args) -> Result<Option<Self>> {
        let Some(tokens) = args.prefill else {
            return Ok(None);
        };
        ensure!(
            (1..=MAX_PREFILL_TOKENS).contains(&tokens),
            "--prefill {tokens}: expected 1..={MAX_PREFILL_TOKENS} tokens"
        );
        let chunk = args.chunk.unwrap_or(DEFAULT_CHUNK);
        ensure!(
            (1..=MAX_CHUNK).contains(&chunk),
            "--chunk {chunk}: expected 1..={MAX_CHUNK} tokens"
        );
        let rate = args.prefill_rate.unwrap_or(DEFAULT_PREFILL_RATE);
        ensure!(
            rate.is_finite() && rate >= 1.0,
            "--prefill-rate {rate}: expected tokens per second, at least 1"
        );
        ensure!(args.prompts >= 1, "--prompts must be at least 1");
        ensure!(
            args.speculate == 0,
            "--speculate applies to decode; prefill reads every row of the prompt"
        );
        Ok(Some(Self {
            tokens,
            chunk: chunk.min(tokens),
            rate,
            prompts: args.prompts,
            pipeline: !args.no_pipeline,
        }))
    }

    /// Store rows one chunk's ticket may carry (every head of every position).
    pub fn max_batch_rows(&self, heads: usize) -> usize {
        self.chunk * heads
    }
}

/// One chunk's rows, requested: one ticket per table layer.
struct InFlight {
    issued: Instant,
    tickets: Vec<Option<Ticket>>,
    /// When every ticket was seen ready (polled, or waited for).
    ready: Option<Instant>,
}

impl InFlight {
    fn poll(&mut self) {
        if self.ready.is_none() && self.tickets.iter().flatten().all(Ticket::is_ready) {
            self.ready = Some(Instant::now());
        }
    }
}

/// What one chunk did.
#[derive(Debug, Default, Clone)]
struct ChunkRecord {
    prompt: usize,
    tokens: usize,
    lookups: u64,
    /// (layers,) unique rows
    unique: Vec<u64>,
    /// (layers,) unique rows the cache did not hold when they were requested
    misses: Vec<u64>,
    compute_us: f64,
    stall_us: f64,
    /// From the request to every row being ready (resolution: [`POLL`]).
    read_us: f64,
    issued_us: f64,
    ready_us: f64,
    start_us: f64,
}

/// The chunked-prefill replay's state.
struct Prefiller<'a> {
    store: &'a Store,
    inputs: &'a Inputs,
    plan: Plan,
    /// (layers,) deadline of each layer as a share of a chunk's compute
    deadline_share: Vec<f64>,
    /// Table layers in the order the model reaches them.
    order: Vec<usize>,
    window: Vec<i64>,
    hashed: Vec<u64>,
    /// (layers, orders) this chunk's row ids
    ids: Vec<Vec<Vec<u64>>>,
    /// (orders,) lookups and unique rows over the run, all layers
    lookups_by_order: Vec<u64>,
    unique_by_order: Vec<u64>,
    spare: Vec<AlignedBuf>,
    chunks: Vec<ChunkRecord>,
    /// Read intervals (request, ready), for the store's IOPS while it reads.
    busy: Vec<(Instant, Instant)>,
    t0: Instant,
}

impl<'a> Prefiller<'a> {
    fn new(args: &Args, store: &'a Store, inputs: &'a Inputs, plan: Plan) -> Result<Self> {
        let layout = inputs.table.layout();
        let orders = inputs.hasher.max_ngram() - 1;
        let deadline_share: Vec<f64> = layout
            .layers
            .iter()
            .map(|l| l.layer_id as f64 / args.model_layers as f64)
            .collect();
        ensure!(
            deadline_share.iter().all(|&s| s < 1.0),
            "--model-layers {} does not reach the table's Engram layers {:?}",
            args.model_layers,
            layout.layers.iter().map(|l| l.layer_id).collect::<Vec<_>>()
        );
        let mut order: Vec<usize> = (0..deadline_share.len()).collect();
        order.sort_by(|&a, &b| deadline_share[a].total_cmp(&deadline_share[b]));
        Ok(Self {
            store,
            inputs,
            plan,
            order,
            window: Vec::with_capacity(inputs.hasher.max_ngram() + 1),
            hashed: vec![0; inputs.hasher.n_hash_heads()],
            ids: vec![vec![Vec::new(); orders]; deadline_share.len()],
            deadline_share,
            lookups_by_order: vec![0; orders],
            unique_by_order: vec![0; orders],
            spare: Vec::new(),
            chunks: Vec::new(),
            busy: Vec::new(),
            t0: Instant::now(),
        })
    }

    fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64() * 1e6
    }

    /// Hashes positions `range` of the stream, dedups each layer's rows and requests them:
    /// one ticket per layer.
    fn request(&mut self, prompt: usize, range: std::ops::Range<usize>) -> Result<InFlight> {
        let stream = &self.inputs.stream;
        let hasher = &self.inputs.hasher;
        let k = self.inputs.hasher.n_hash_heads() / (self.inputs.hasher.max_ngram() - 1);
        let keep = hasher.max_ngram() - 1;
        for layer in &mut self.ids {
            layer.iter_mut().for_each(Vec::clear);
        }
        for p in range.clone() {
            if stream.doc_start[p] {
                self.window.clear();
            }
            if self.window.len() > keep {
                self.window.drain(..self.window.len() - keep);
            }
            self.window.push(stream.canonical[p]);
            for (li, layer) in self.ids.iter_mut().enumerate() {
                hasher.hash_last_into(li, &self.window, HashOutput::RowId, &mut self.hashed)?;
                // Heads are order-major: order n's heads are (n - 2) * K .. (n - 1) * K.
                for (o, heads) in self.hashed.chunks_exact(k).enumerate() {
                    layer[o].extend_from_slice(heads);
                }
            }
        }
        let mut rec = ChunkRecord {
            prompt,
            tokens: range.len(),
            ..ChunkRecord::default()
        };
        let mut tickets = Vec::with_capacity(self.ids.len());
        let mut rows = Vec::new();
        for (li, layer) in self.ids.iter_mut().enumerate() {
            rows.clear();
            for (o, ids) in layer.iter_mut().enumerate() {
                rec.lookups += ids.len() as u64;
                self.lookups_by_order[o] += ids.len() as u64;
                ids.sort_unstable();
                ids.dedup();
                self.unique_by_order[o] += ids.len() as u64;
                // Orders' heads own disjoint row ranges: the union stays unique.
                rows.extend_from_slice(ids);
            }
            rec.unique.push(rows.len() as u64);
            rec.misses.push(
                rows.iter()
                    .filter(|&&r| !self.store.cache_contains(li, r))
                    .count() as u64,
            );
            let need = rows.len() * self.store.row_bytes();
            let buf = match self.spare.iter().position(|b| b.capacity() >= need) {
                Some(i) => self.spare.swap_remove(i),
                None => self.store.alloc_rows(rows.len().max(1))?,
            };
            tickets.push(Some(self.store.prefetch(li, &rows, buf)));
        }
        let issued = Instant::now();
        rec.issued_us = self.us(issued);
        self.chunks.push(rec);
        Ok(InFlight {
            issued,
            tickets,
            ready: None,
        })
    }

    /// Sleeps until `t`, polling the requests in flight for readiness.
    fn wait_polling(&self, t: Instant, flights: &mut [&mut InFlight]) {
        loop {
            for f in flights.iter_mut() {
                f.poll();
            }
            let now = Instant::now();
            if now >= t {
                return;
            }
            std::thread::sleep((t - now).min(POLL));
        }
    }

    /// Replays one prompt starting at stream position `at`; returns (TTFT, resident TTFT).
    fn prompt(&mut self, prompt: usize, at: usize) -> Result<(Duration, Duration)> {
        let plan = self.plan;
        let ranges: Vec<std::ops::Range<usize>> = (0..plan.tokens)
            .step_by(plan.chunk)
            .map(|s| at + s..at + (s + plan.chunk).min(plan.tokens))
            .collect();
        self.window.clear();
        let first_chunk = self.chunks.len();
        let mut current = self.request(prompt, ranges[0].clone())?;
        let mut resident = Duration::ZERO;
        let mut start = current.issued;
        let ttft_from = current.issued;
        for (k, range) in ranges.iter().enumerate() {
            let ci = first_chunk + k;
            let compute = Duration::from_secs_f64(range.len() as f64 / plan.rate);
            resident += compute;
            if k > 0 && !plan.pipeline {
                current = self.request(prompt, range.clone())?;
            }
            let mut next = match ranges.get(k + 1) {
                Some(r) if plan.pipeline => Some(self.request(prompt, r.clone())?),
                _ => None,
            };
            let mut stalled = Duration::ZERO;
            for li in self.order.clone() {
                let deadline = start + compute.mul_f64(self.deadline_share[li]) + stalled;
                {
                    let mut flights: Vec<&mut InFlight> = vec![&mut current];
                    if let Some(n) = next.as_mut() {
                        flights.push(n);
                    }
                    self.wait_polling(deadline, &mut flights);
                }
                let ticket = current.tickets[li]
                    .take()
                    .with_context(|| format!("layer index {li} has no ticket"))?;
                let ready = ticket.is_ready();
                let (buf, r) = ticket.wait();
                r.with_context(|| format!("reading the rows of layer index {li}"))?;
                self.spare.push(buf);
                if !ready {
                    stalled += Instant::now().saturating_duration_since(deadline);
                }
            }
            let ready = current.ready.unwrap_or_else(Instant::now);
            self.busy.push((current.issued, ready));
            let end = start + compute + stalled;
            {
                let mut flights: Vec<&mut InFlight> = next.iter_mut().collect();
                self.wait_polling(end, &mut flights);
            }
            let (start_us, ready_us) = (self.us(start), self.us(ready));
            let rec = &mut self.chunks[ci];
            rec.compute_us = compute.as_secs_f64() * 1e6;
            rec.stall_us = stalled.as_secs_f64() * 1e6;
            rec.start_us = start_us;
            rec.ready_us = ready_us;
            rec.read_us = ready_us - rec.issued_us;
            start = end;
            if let Some(n) = next {
                current = n;
            }
        }
        Ok((start.saturating_duration_since(ttft_from), resident))
    }
}

/// Median of a sample (the upper one of an even count); 0 when empty.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Length of the union of intervals.
fn union_len(mut v: Vec<(Instant, Instant)>) -> Duration {
    v.sort_by_key(|i| i.0);
    let mut total = Duration::ZERO;
    let mut cur: Option<(Instant, Instant)> = None;
    for (a, b) in v {
        match &mut cur {
            Some((_, e)) if a <= *e => *e = (*e).max(b),
            _ => {
                if let Some((s, e)) = cur {
                    total += e - s;
                }
                cur = Some((a, b));
            }
        }
    }
    if let Some((s, e)) = cur {
        total += e - s;
    }
    total
}

/// Runs the prefill replay; returns the `prefill` JSON object.
pub fn run(args: &Args, store: &Store, inputs: &Inputs, plan: Plan) -> Result<serde_json::Value> {
    let need = plan.tokens * plan.prompts;
    let have = inputs.stream.raw.len();
    ensure!(
        have >= need,
        "the held-out text has {have} tokens, fewer than --prefill {} x --prompts {}",
        plan.tokens,
        plan.prompts
    );
    let span = floor::layer_span(&inputs.table)?;
    let qd = args.read.queue_depth;
    let fio_before = floor::fio_random_if(args, &span)?;
    let mut p = Prefiller::new(args, store, inputs, plan)?;
    store.reset_stats();
    let t_run = Instant::now();
    let mut ttft = Vec::with_capacity(plan.prompts);
    let mut resident = Vec::with_capacity(plan.prompts);
    for i in 0..plan.prompts {
        let (t, r) = p.prompt(i, i * plan.tokens)?;
        ttft.push(t.as_secs_f64() * 1e6);
        resident.push(r.as_secs_f64() * 1e6);
    }
    let wall = t_run.elapsed().as_secs_f64();
    let st = store.stats();
    let fio_after = floor::fio_random_if(args, &span)?;
    let fio = FioRuns::new(fio_before, fio_after);
    let busy = union_len(std::mem::take(&mut p.busy)).as_secs_f64();
    let tokens = (plan.tokens * plan.prompts) as f64;
    let n_layers = inputs.table.n_layers() as f64;
    let lookups: u64 = p.chunks.iter().map(|c| c.lookups).sum();
    let unique: u64 = p.chunks.iter().flat_map(|c| &c.unique).sum();
    let misses: u64 = p.chunks.iter().flat_map(|c| &c.misses).sum();
    // Device reads per miss (rows sharing a 4 KiB block share a read): each chunk's misses
    // are turned into reads at the run's ratio.
    let reads_per_miss = st.device_reads as f64 / misses.max(1) as f64;
    let floor = fio.iops().map(|iops| {
        let per_prompt: Vec<f64> = (0..plan.prompts)
            .map(|i| {
                let chunks: Vec<floor::ChunkLoad> = p
                    .chunks
                    .iter()
                    .filter(|c| c.prompt == i)
                    .map(|c| floor::ChunkLoad {
                        reads: c
                            .misses
                            .iter()
                            .map(|&m| m as f64 * reads_per_miss)
                            .collect(),
                        compute_us: c.compute_us,
                    })
                    .collect();
                floor::prefill_floor_us(&chunks, iops, &p.deadline_share, plan.pipeline)
            })
            .collect();
        median(&per_prompt)
    });
    let extra = median(&ttft) - median(&resident);
    let orders: Vec<serde_json::Value> = (0..p.lookups_by_order.len())
        .map(|o| {
            serde_json::json!({
                "order": o + 2,
                "unique_share": p.unique_by_order[o] as f64 / p.lookups_by_order[o].max(1) as f64,
                "unique_rows_per_token_per_layer": p.unique_by_order[o] as f64 / tokens / n_layers,
            })
        })
        .collect();
    let chunks: Vec<serde_json::Value> = p
        .chunks
        .iter()
        .map(|c| {
            serde_json::json!({
                "prompt": c.prompt, "tokens": c.tokens, "lookups": c.lookups,
                "unique_rows": c.unique, "misses": c.misses,
                "compute_us": c.compute_us, "stall_us": c.stall_us,
                "issued_us": c.issued_us, "start_us": c.start_us,
                "ready_us": c.ready_us, "read_us": c.read_us,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "tokens": plan.tokens, "chunk": plan.chunk, "prompts": plan.prompts,
        "prefill_rate": plan.rate, "pipeline": plan.pipeline, "queue_depth": qd,
        "deadline_share": p.deadline_share,
        "ttft_us": median(&ttft), "ttft_resident_us": median(&resident),
        "ttft_us_by_prompt": ttft, "ttft_resident_us_by_prompt": resident,
        "slowdown": extra / median(&resident).max(1e-9),
        "lookups": lookups, "unique_rows": unique,
        "unique_share": unique as f64 / lookups.max(1) as f64,
        "unique_rows_per_token": unique as f64 / tokens,
        "by_order": orders,
        "misses": misses,
        "reads_per_miss": reads_per_miss,
        "rows_requested": st.rows_requested,
        "hit_rate": st.cache_hit_rate,
        "device_reads": st.device_reads, "device_bytes": st.device_bytes,
        "device_read_us": {"p50": st.device_read.p50_us, "p99": st.device_read.p99_us},
        "read_busy_seconds": busy,
        "iops_while_reading": st.device_reads as f64 / busy.max(1e-9),
        "wall_seconds": wall,
        "errors": st.errors,
        "floor": {
            "fio": fio.to_json(),
            "iops": fio.iops(),
            "ttft_extra_us": extra,
            "floor_us": floor,
            "measured_over_floor": floor.filter(|&f| f > 0.0).map(|f| extra / f),
            "store_over_fio_iops": fio.iops().map(|i| st.device_reads as f64 / busy.max(1e-9) / i),
        },
        "chunks": chunks,
    }))
}

/// Prints the prefill report.
pub fn print_summary(d: &serde_json::Value) {
    let p = &d["prefill"];
    let f = |q: &str| super::number(p, q);
    crate::outln!(
        "prefill: {} prompt(s) of {} tokens in chunks of {} at {:.0} tokens/s ({}), {} backend, cache {:.1}% of the table, QD {}",
        p["prompts"],
        p["tokens"],
        p["chunk"],
        f("/prefill_rate"),
        if p["pipeline"].as_bool() == Some(true) {
            "next chunk's rows requested while one computes"
        } else {
            "no pipeline"
        },
        d["backend"].as_str().unwrap_or_default(),
        super::number(d, "/cache_fraction") * 100.0,
        p["queue_depth"],
    );
    crate::outln!(
        "TTFT {:.1} ms vs {:.1} ms resident (+{:.1}%); unique rows {:.1}% of lookups ({:.1} per token); hit rate {:.1}%; {} device reads, {:.0} IOPS while reading",
        f("/ttft_us") / 1e3,
        f("/ttft_resident_us") / 1e3,
        f("/slowdown") * 100.0,
        f("/unique_share") * 100.0,
        f("/unique_rows_per_token"),
        f("/hit_rate") * 100.0,
        p["device_reads"],
        f("/iops_while_reading"),
    );
    let orders: Vec<String> = p["by_order"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|o| {
                    format!(
                        "order {}: {:.1}%",
                        o["order"],
                        o["unique_share"].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    crate::outln!("unique share per order: {}", orders.join(", "));
    match p
        .pointer("/floor/floor_us")
        .and_then(serde_json::Value::as_f64)
    {
        Some(floor) => crate::outln!(
            "floor (chunk misses x {:.2} reads each at fio's {:.0} IOPS, QD {}): +{:.1} ms; measured +{:.1} ms = {:.2}x the floor; store IOPS {:.2}x fio's",
            f("/reads_per_miss"),
            f("/floor/iops"),
            p["queue_depth"],
            floor / 1e3,
            f("/floor/ttft_extra_us") / 1e3,
            f("/floor/measured_over_floor"),
            f("/floor/store_over_fio_iops"),
        ),
        None => crate::outln!("floor: not measured (--fio-baseline runs fio on the table's file)"),
    }
}
