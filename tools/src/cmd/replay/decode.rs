//! The decode replay: B sequences advance one token per modelled step; each step's rows
//! are requested when its token is sampled and needed by each Engram layer at its deadline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use engram_kernels::hash::HashOutput;
use engram_kernels::rng::SplitMix64;
use engram_store::{AlignedBuf, Speculation, Store, Ticket};

use super::floor::{self, DecodeLoad, FioRuns};
use super::{
    Args, Inputs, MTP_SEED, Predictor, RowSet, Timing, profiled_rows, quantiles, wait_until,
};

/// Lookups classified against the profile and the stream's own past.
#[derive(Debug, Default, Clone)]
struct Floor {
    lookups: u64,
    /// On rows the profile never saw.
    unseen: u64,
    /// First touches of rows the profile never saw: no cache policy avoids these misses.
    compulsory: u64,
    /// First touches (in this run) of rows the cache did not hold at that moment: the
    /// misses of this cache size and seeding that no admission or eviction policy avoids.
    cold: u64,
    /// (layers,) steps in which the layer had at least one cold lookup: each such step
    /// waits for a device read unless its lead time covers one.
    cold_steps: Vec<u64>,
    /// (layers,) cold lookups
    cold_by_layer: Vec<u64>,
}

/// One decoding sequence: a slice of the stream and its n-gram history.
#[derive(Debug)]
struct Sequence {
    next: usize,
    end: usize,
    /// The last N - 1 canonical ids, then the current one while hashing.
    window: Vec<i64>,
    /// Raw ids predicted for the next position.
    predicted: Vec<u32>,
}

/// What the replay counts as it goes.
#[derive(Debug, Default)]
struct Tally {
    floor: Floor,
    /// Positions whose prediction was scored, had a candidate, was right.
    scored: u64,
    predicted: u64,
    spec_hits: u64,
    /// Rows offered to `Store::speculate` and accepted.
    offered: u64,
    /// (steps,) stall of each step
    stall_us: Vec<f64>,
    /// (layers,) total stall per table layer
    layer_stall_us: Vec<f64>,
    /// (steps * layers,) how late the replay thread reached each deadline
    late_us: Vec<f64>,
}

/// The decode loop's state: every buffer allocated once.
struct Replayer<'a> {
    store: &'a Store,
    inputs: &'a Inputs,
    timing: &'a Timing,
    k: usize,
    predictor: Predictor,
    profiled: RowSet,
    /// Rows looked up so far in this run.
    touched: RowSet,
    seqs: Vec<Sequence>,
    /// (layers,) row buffers handed to and back from the tickets
    bufs: Vec<Option<AlignedBuf>>,
    /// (layers, batch * heads) this step's row ids
    ids: Vec<Vec<u64>>,
    /// (layers, batch * k * heads) the next step's candidates' row ids
    spec_ids: Vec<Vec<u64>>,
    speculations: Vec<Speculation>,
    /// (heads,) one position's row ids in one layer
    hashed: Vec<u64>,
    /// Table layers in the order the decoder reaches them.
    order: Vec<usize>,
    /// Request every layer's rows when the token is sampled (`--prefetch-at-once`).
    at_once: bool,
    /// Sleep while a layer waits for its rows instead of polling (`--sleep-on-rows`).
    sleep_on_rows: bool,
    tally: Tally,
}

impl<'a> Replayer<'a> {
    fn new(args: &Args, store: &'a Store, inputs: &'a Inputs, timing: &'a Timing) -> Result<Self> {
        let n_layers = inputs.table.n_layers();
        let heads = inputs.hasher.n_hash_heads();
        let n = inputs.stream.raw.len();
        let seqs = (0..args.batch)
            .map(|b| Sequence {
                next: b * n / args.batch,
                end: (b + 1) * n / args.batch,
                window: Vec::with_capacity(inputs.hasher.max_ngram() + 1),
                predicted: Vec::with_capacity(args.speculate),
            })
            .collect();
        let bufs = (0..n_layers)
            .map(|_| store.alloc_rows(args.batch * heads).map(Some))
            .collect::<Result<_, _>>()?;
        let mut order: Vec<usize> = (0..n_layers).collect();
        order.sort_by_key(|&li| timing.deadlines[li]);
        Ok(Self {
            store,
            inputs,
            timing,
            k: args.speculate,
            predictor: inputs.predictor,
            profiled: profiled_rows(&inputs.table, inputs.profile.as_ref())?,
            touched: RowSet::new(&inputs.table)?,
            seqs,
            bufs,
            ids: vec![Vec::with_capacity(args.batch * heads); n_layers],
            spec_ids: vec![Vec::with_capacity(args.batch * heads * args.speculate); n_layers],
            speculations: Vec::with_capacity(n_layers),
            hashed: vec![0; heads],
            order,
            at_once: args.prefetch_at_once,
            sleep_on_rows: args.sleep_on_rows,
            tally: Tally {
                layer_stall_us: vec![0.0; n_layers],
                floor: Floor {
                    cold_steps: vec![0; n_layers],
                    cold_by_layer: vec![0; n_layers],
                    ..Floor::default()
                },
                ..Tally::default()
            },
        })
    }

    /// Steps every sequence can take.
    fn steps_available(&self) -> usize {
        self.seqs.iter().map(|s| s.end - s.next).min().unwrap_or(0)
    }

    /// Advances every sequence by one token and collects its rows per layer (scoring the
    /// last step's prediction and the compulsory-miss floor on the way).
    fn next_tokens(&mut self) -> Result<()> {
        let stream = &self.inputs.stream;
        let hasher = &self.inputs.hasher;
        let keep = hasher.max_ngram() - 1;
        for v in &mut self.ids {
            v.clear();
        }
        let mut cold_layers = vec![false; self.ids.len()];
        for seq in &mut self.seqs {
            let p = seq.next;
            seq.next += 1;
            if stream.doc_start[p] {
                seq.window.clear();
            } else if self.k > 0 {
                let t = &mut self.tally;
                t.scored += 1;
                t.predicted += u64::from(!seq.predicted.is_empty());
                t.spec_hits += u64::from(seq.predicted.contains(&stream.raw[p]));
            }
            if seq.window.len() > keep {
                seq.window.drain(..seq.window.len() - keep);
            }
            seq.window.push(stream.canonical[p]);
            for (li, v) in self.ids.iter_mut().enumerate() {
                hasher.hash_last_into(li, &seq.window, HashOutput::RowId, &mut self.hashed)?;
                for &row in &self.hashed {
                    let f = &mut self.tally.floor;
                    f.lookups += 1;
                    let first = !self.touched.insert(li, row);
                    if first && !self.store.cache_contains(li, row) {
                        f.cold += 1;
                        f.cold_by_layer[li] += 1;
                        cold_layers[li] = true;
                    }
                    if !self.profiled.contains(li, row) {
                        f.unseen += 1;
                        f.compulsory += u64::from(first);
                    }
                }
                v.extend_from_slice(&self.hashed);
            }
        }
        for (n, cold) in self.tally.floor.cold_steps.iter_mut().zip(cold_layers) {
            *n += u64::from(cold);
        }
        Ok(())
    }

    /// Prefetches this step's rows of table layer `li`: one ticket.
    fn prefetch_layer(&mut self, li: usize) -> Result<Ticket> {
        let v = &self.ids[li];
        let buf = match self.bufs[li].take() {
            Some(b) => b,
            None => self.store.alloc_rows(v.len())?,
        };
        Ok(self.store.prefetch(li, v, buf))
    }

    /// Prefetches this step's rows when its token is sampled: the first Engram layer's, or
    /// with `--prefetch-at-once` every layer's (the rest follow in [`Replayer::compute`]).
    fn prefetch(&mut self) -> Result<Vec<Option<Ticket>>> {
        let mut tickets: Vec<Option<Ticket>> = (0..self.ids.len()).map(|_| None).collect();
        let first = if self.at_once { self.order.len() } else { 1 };
        for k in 0..first.min(self.order.len()) {
            let li = self.order[k];
            tickets[li] = Some(self.prefetch_layer(li)?);
        }
        Ok(tickets)
    }

    /// Cancels the last step's speculation and speculates on the next step's tokens.
    fn speculate(&mut self) -> Result<()> {
        for s in self.speculations.drain(..) {
            s.cancel();
        }
        if self.k == 0 {
            return Ok(());
        }
        for v in &mut self.spec_ids {
            v.clear();
        }
        let stream = &self.inputs.stream;
        for seq in &mut self.seqs {
            match &self.inputs.candidates {
                Some(c) => c.predict_into(&seq.window, self.k, &mut seq.predicted),
                None => seq.predicted.clear(),
            }
            if let Predictor::Mtp(p) = self.predictor {
                let truth = (seq.next < seq.end && !stream.doc_start[seq.next])
                    .then(|| stream.raw[seq.next]);
                let hit = SplitMix64::keyed(&[MTP_SEED, seq.next as u64]).next_f64() < p;
                // The head's guess: the truth when it hits, else the table's best other one.
                let guess = if hit {
                    truth
                } else {
                    seq.predicted.iter().copied().find(|&t| Some(t) != truth)
                };
                if let Some(g) = guess {
                    seq.predicted.retain(|&t| t != g);
                    seq.predicted.insert(0, g);
                    seq.predicted.truncate(self.k);
                }
            }
            let base = seq.window.len();
            for &cand in &seq.predicted {
                seq.window
                    .push(self.inputs.compression.compress_id(i64::from(cand))?);
                for (li, v) in self.spec_ids.iter_mut().enumerate() {
                    self.inputs.hasher.hash_last_into(
                        li,
                        &seq.window,
                        HashOutput::RowId,
                        &mut self.hashed,
                    )?;
                    v.extend_from_slice(&self.hashed);
                }
                seq.window.truncate(base);
            }
        }
        for (li, v) in self.spec_ids.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let s = self.store.speculate(li, v)?;
            if s.accepted() {
                self.tally.offered += v.len() as u64;
            }
            self.speculations.push(s);
        }
        Ok(())
    }

    /// The step's compute from `start`: each Engram layer waits for its rows at its
    /// deadline (pushed back by the stalls before it). Returns when the step ends.
    fn compute(&mut self, start: Instant, mut tickets: Vec<Option<Ticket>>) -> Result<Instant> {
        let mut stalled = Duration::ZERO;
        for k in 0..self.order.len() {
            let li = self.order[k];
            let deadline = start + self.timing.deadlines[li] + stalled;
            wait_until(deadline);
            let t = &mut self.tally;
            t.late_us.push(
                Instant::now()
                    .saturating_duration_since(deadline)
                    .as_secs_f64()
                    * 1e6,
            );
            let Some(ticket) = tickets.get_mut(li).and_then(Option::take) else {
                bail!("layer index {li} has no ticket");
            };
            // Rows ready on arrival cost nothing; otherwise the layer waits from its deadline.
            let ready = ticket.is_ready();
            if !ready && !self.sleep_on_rows {
                // The decoder's host thread polls for its inputs; blocking would add a
                // thread wake-up to every stall.
                while !ticket.is_ready() {
                    std::hint::spin_loop();
                }
            }
            let (buf, r) = ticket.wait();
            r.with_context(|| format!("reading the rows of layer index {li}"))?;
            self.bufs[li] = Some(buf);
            if !ready {
                let waited = Instant::now().saturating_duration_since(deadline);
                stalled += waited;
                t.layer_stall_us[li] += waited.as_secs_f64() * 1e6;
            }
            // Staged: the next Engram layer's rows once this layer's are in.
            if let Some(&next) = self.order.get(k + 1)
                && tickets[next].is_none()
            {
                tickets[next] = Some(self.prefetch_layer(next)?);
            }
        }
        self.tally.stall_us.push(stalled.as_secs_f64() * 1e6);
        let end = start + self.timing.step + stalled;
        wait_until(end);
        Ok(end)
    }

    fn run(&mut self, steps: usize) -> Result<()> {
        let mut start = Instant::now();
        for _ in 0..steps {
            self.next_tokens()?;
            let tickets = self.prefetch()?;
            self.speculate()?;
            start = self.compute(start, tickets)?;
        }
        for s in self.speculations.drain(..) {
            s.cancel();
        }
        Ok(())
    }
}

/// Runs the decode replay on an open store; returns its fields of the record (merged into
/// the common ones by the caller).
pub fn run(
    args: &Args,
    store: &Store,
    inputs: &Inputs,
    timing: &Timing,
) -> Result<serde_json::Value> {
    let span = floor::layer_span(&inputs.table)?;
    let qd = args.read.queue_depth;
    let fio_before = floor::fio_random_if(args, &span)?;
    store.reset_stats();
    let mut replayer = Replayer::new(args, store, inputs, timing)?;
    let steps = args.max_steps.min(replayer.steps_available());
    ensure!(steps > 0, "no tokens to replay");
    let t_run = Instant::now();
    replayer.run(steps)?;
    let wall = t_run.elapsed().as_secs_f64();
    let st = store.stats();
    let replayer_predictor = replayer.predictor.name();
    let mut tally = replayer.tally;

    let tokens = (steps * args.batch) as u64;
    let step_us = timing.step.as_secs_f64() * 1e6;
    let total_stall_us: f64 = tally.stall_us.iter().sum();
    let slowdown = total_stall_us / (steps as f64 * step_us);
    let per_token = |x: u64| x as f64 / tokens as f64;
    let share = |x: u64, of: u64| x as f64 / of.max(1) as f64;
    let f = &tally.floor;
    let load = DecodeLoad {
        step_us,
        deadline_us: timing
            .deadlines
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect(),
        cold_step_share: f
            .cold_steps
            .iter()
            .map(|&n| share(n, steps as u64))
            .collect(),
        reads_per_step: f
            .cold_by_layer
            .iter()
            .map(|&n| share(n, steps as u64))
            .collect(),
    };
    let fio_after = floor::fio_random_if(args, &span)?;
    let burst = if args.fio_baseline {
        let n = load.burst();
        Some((
            n,
            floor::fio_burst(&span, n, qd, step_us.round() as u64, args.fio_seconds)?,
        ))
    } else {
        None
    };
    let floor = floor::decode_json(&load, slowdown, &FioRuns::new(fio_before, fio_after), burst);
    let prefetch = if args.prefetch_at_once {
        "at_once"
    } else {
        "by_layer"
    };
    let mut record = serde_json::json!({
        "batch": args.batch, "steps": steps, "tokens": tokens,
        "step_us": step_us,
        "lead_us": timing.deadlines.iter().min().map(|d| d.as_secs_f64() * 1e6),
        "deadline_us": load.deadline_us,
        "speculate": args.speculate,
        "wall_seconds": wall,
        "stall_us_per_token": quantiles(&mut tally.stall_us),
        "stall_us_per_token_by_layer": tally.layer_stall_us.iter().map(|s| s / steps as f64).collect::<Vec<_>>(),
        "slowdown": slowdown,
        "tokens_per_second": tokens as f64 / ((steps as f64 * step_us + total_stall_us) / 1e6),
        "tokens_per_second_resident": tokens as f64 / (steps as f64 * step_us / 1e6),
        "hit_rate": st.cache_hit_rate,
        "lookups": f.lookups,
        "profile_unseen_share": share(f.unseen, f.lookups),
        "compulsory_miss_floor": share(f.compulsory, f.lookups),
        "cold_miss_share": share(f.cold, f.lookups),
        "cold_steps_by_layer": load.cold_step_share,
        "reads_per_token": per_token(st.device_reads),
        "device_reads": st.device_reads,
        "device_bytes_per_token": per_token(st.device_bytes),
        "rows_read_per_token": per_token(st.rows_unique),
        "record_reads_per_token": per_token(st.record_reads),
        "record_rows_per_token": per_token(st.record_rows),
        "iops": st.device_reads as f64 / wall.max(1e-9),
        "device_read_us": {"p50": st.device_read.p50_us, "p99": st.device_read.p99_us},
        "late_us": quantiles(&mut tally.late_us),
        "errors": st.errors,
        "floor": floor,
        "speculation": {
            "k": args.speculate,
            "predictor": replayer_predictor,
            "positions_scored": tally.scored,
            "accuracy": share(tally.spec_hits, tally.scored),
            "predicted_share": share(tally.predicted, tally.scored),
            "rows_offered_per_token": per_token(tally.offered),
            "rows_read_per_token": per_token(st.spec_rows_read),
            "batches": st.spec_batches, "dropped": st.spec_dropped, "failed": st.spec_failed,
        },
    });
    record["prefetch"] = prefetch.into();
    record["wait_for_rows"] = if args.sleep_on_rows { "sleep" } else { "poll" }.into();
    Ok(record)
}

/// Prints the decode report.
pub fn print_summary(d: &serde_json::Value) {
    let f = |p: &str| super::number(d, p);
    crate::outln!(
        "{} tokens ({} steps x batch {}) over {}, {} backend, cache {:.1}% of the table, speculate {}",
        d["tokens"],
        d["steps"],
        d["batch"],
        std::path::Path::new(d["table"].as_str().unwrap_or_default()).display(),
        d["backend"].as_str().unwrap_or_default(),
        f("/cache_fraction") * 100.0,
        d["speculate"]
    );
    crate::outln!(
        "step {:.0} us, lead {:.0} us: stall per token mean {:.1} us, p50 {:.1}, p99 {:.1}; slowdown {:.3}% vs resident",
        f("/step_us"),
        f("/lead_us"),
        f("/stall_us_per_token/mean"),
        f("/stall_us_per_token/p50"),
        f("/stall_us_per_token/p99"),
        f("/slowdown") * 100.0
    );
    crate::outln!(
        "hit rate {:.1}%; cold misses {:.1}% of lookups; compulsory-miss floor {:.1}% (rows the profile never saw: {:.1}% of lookups); {:.1} reads/token, {:.0} IOPS",
        f("/hit_rate") * 100.0,
        f("/cold_miss_share") * 100.0,
        f("/compulsory_miss_floor") * 100.0,
        f("/profile_unseen_share") * 100.0,
        f("/reads_per_token"),
        f("/iops")
    );
    match d
        .pointer("/floor/slowdown_floor")
        .and_then(serde_json::Value::as_f64)
    {
        Some(floor) => crate::outln!(
            "floor (fio on the table's file: bursts of {} after {:.0} us idle done in {:.0} us mean; {:.0} IOPS at QD {}): slowdown {:.3}%; measured {:.3}% = {:.2}x the floor",
            d["floor"]["fio_burst"]["burst"],
            f("/step_us"),
            f("/floor/fio_burst/burst_done_mean_us"),
            f("/floor/fio_random/0/iops"),
            d["queue_depth"],
            floor * 100.0,
            f("/slowdown") * 100.0,
            f("/floor/measured_over_floor"),
        ),
        None => crate::outln!("floor: not measured (--fio-baseline runs fio on the table's file)"),
    }
    if f("/speculation/k") > 0.0 {
        crate::outln!(
            "speculation ({}): next token among the candidates {:.1}% of the time; {:.1} rows/token offered, {:.1} read ahead",
            d["speculation"]["predictor"].as_str().unwrap_or_default(),
            f("/speculation/accuracy") * 100.0,
            f("/speculation/rows_offered_per_token"),
            f("/speculation/rows_read_per_token")
        );
    }
}
