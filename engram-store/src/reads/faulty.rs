//! A fault-injecting engine (in the manner of redb's): wraps a real engine and, driven by
//! a seed, fails reads with EIO, shortens them, flips a byte of what they read, or delays
//! and reorders their completions. Tests use it to prove that every fault surfaces as a
//! typed error naming the file and offset, and that none ever yields a wrong row.
//!
//! Configured with [`FaultPlan`] (`BackendOptions::faults`) or the environment variable
//! `ENGRAM_IO_FAULTS`, e.g. `seed=7,eio=0.01,short=0.01,corrupt=0.01,delay=0.2,reorder`
//! or `eio@3,short@10` (the 4th and 11th read of each reader).
//!
//! It also fails the engine itself: `submit@N` makes the reader's (N+1)-th submit fail as
//! broken, `reap@N` its (N+1)-th reap. Each fires once per reader: the engine the store
//! rebuilds after the failure runs without them ([`FaultPlan::for_rebuilt_engine`]).

use std::fmt;

use super::engine::{Completion, Engine, EngineError, ReadReq};
use super::staging::Lease;
use crate::error::{Error, Result};
use engram_kernels::rng::SplitMix64;

/// Environment variable with a fault plan for every reader the process opens.
pub const IO_FAULTS_ENV: &str = "ENGRAM_IO_FAULTS";

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The read fails with EIO without reaching the device.
    Eio,
    /// The read reports fewer bytes than asked.
    Short,
    /// One byte of what the read returned is flipped (media corruption).
    Corrupt,
    /// The completion is held back for a few reaps (later than reads submitted after it).
    Delay,
    /// The engine fails the submit as broken (an `io_uring_enter` error, a stopped pool);
    /// its index counts submits.
    Submit,
    /// The engine fails the reap as broken; its index counts reaps.
    Reap,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Eio => "eio",
            Fault::Short => "short",
            Fault::Corrupt => "corrupt",
            Fault::Delay => "delay",
            Fault::Submit => "submit",
            Fault::Reap => "reap",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eio" => Fault::Eio,
            "short" => Fault::Short,
            "corrupt" => Fault::Corrupt,
            "delay" => Fault::Delay,
            "submit" => Fault::Submit,
            "reap" => Fault::Reap,
            _ => return None,
        })
    }
}

/// Which reads fail and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Seed of the fault draws (the same seed injects the same faults).
    pub seed: u64,
    /// Probability per read of each fault (checked in this order).
    pub eio: f64,
    /// Probability per read of a short read, in `[0, 1]`.
    pub short: f64,
    /// Probability per read of a flipped byte, in `[0, 1]`.
    pub corrupt: f64,
    /// Probability per read of a delayed completion, in `[0, 1]`.
    pub delay: f64,
    /// Release completions in a shuffled order.
    pub reorder: bool,
    /// Faults at chosen reads: (index of the read on this reader, fault); for
    /// [`Fault::Submit`] the index counts submits, for [`Fault::Reap`] reaps.
    pub at: Vec<(u64, Fault)>,
}

impl FaultPlan {
    /// Parses `key=value` and `fault@index` items separated by commas (see the module
    /// docs); an unknown item is an error, never ignored.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |item: &str, why: &str| Error::Invalid {
            what: "fault plan",
            reason: format!(
                "{item:?}: {why} (expected e.g. seed=7,eio=0.01,short=0.01,corrupt=0.01,\
                 delay=0.2,reorder,eio@3,submit@5,reap@2)"
            ),
        };
        let mut plan = FaultPlan::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "reorder" {
                plan.reorder = true;
            } else if let Some((fault, index)) = item.split_once('@') {
                let fault = Fault::parse(fault).ok_or_else(|| bad(item, "unknown fault"))?;
                let index = index
                    .parse()
                    .map_err(|_| bad(item, "the read index is not a number"))?;
                plan.at.push((index, fault));
            } else if let Some((key, value)) = item.split_once('=') {
                if key == "seed" {
                    plan.seed = value.parse().map_err(|_| bad(item, "not a number"))?;
                    continue;
                }
                let p: f64 = value.parse().map_err(|_| bad(item, "not a number"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad(item, "a probability must be in 0..=1"));
                }
                match Fault::parse(key) {
                    Some(Fault::Eio) => plan.eio = p,
                    Some(Fault::Short) => plan.short = p,
                    Some(Fault::Corrupt) => plan.corrupt = p,
                    Some(Fault::Delay) => plan.delay = p,
                    Some(Fault::Submit | Fault::Reap) => {
                        return Err(bad(item, "engine failures are given as submit@N or reap@N"));
                    }
                    None => return Err(bad(item, "unknown key")),
                }
            } else {
                return Err(bad(item, "unknown item"));
            }
        }
        Ok(plan)
    }

    /// The plan in `ENGRAM_IO_FAULTS`, if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(IO_FAULTS_ENV) {
            Ok(v) => Self::parse(&v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(Error::Invalid {
                what: "fault plan",
                reason: format!("{IO_FAULTS_ENV}: {e}"),
            }),
        }
    }

    /// The plan for an engine rebuilt after a failure: the same read faults, no engine
    /// failures (each fires once per reader).
    pub fn for_rebuilt_engine(&self) -> Self {
        let mut plan = self.clone();
        plan.at
            .retain(|(_, f)| !matches!(f, Fault::Submit | Fault::Reap));
        plan
    }

    /// Whether the plan fails the engine itself (`submit@N`, `reap@N`).
    pub fn breaks_engine(&self) -> bool {
        self.at
            .iter()
            .any(|(_, f)| matches!(f, Fault::Submit | Fault::Reap))
    }

    /// Whether engine failure `kind` is planned at `index`.
    fn engine_fault(&self, kind: Fault, index: u64) -> bool {
        self.at.iter().any(|&(i, f)| f == kind && i == index)
    }

    fn choose(&self, index: u64, rng: &mut SplitMix64) -> Option<Fault> {
        let is_read_fault = |f: &Fault| !matches!(f, Fault::Submit | Fault::Reap);
        if let Some(&(_, f)) = self
            .at
            .iter()
            .find(|(i, f)| *i == index && is_read_fault(f))
        {
            return Some(f);
        }
        for (p, f) in [
            (self.eio, Fault::Eio),
            (self.short, Fault::Short),
            (self.corrupt, Fault::Corrupt),
            (self.delay, Fault::Delay),
        ] {
            if p > 0.0 && rng.next_f64() < p {
                return Some(f);
            }
        }
        None
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={},eio={},short={},corrupt={},delay={}",
            self.seed, self.eio, self.short, self.corrupt, self.delay
        )?;
        if self.reorder {
            f.write_str(",reorder")?;
        }
        for (i, fault) in &self.at {
            write!(f, ",{}@{i}", fault.name())?;
        }
        Ok(())
    }
}

/// The engine wrapper.
#[derive(Debug)]
pub struct FaultyEngine {
    inner: Box<dyn Engine>,
    plan: FaultPlan,
    rng: SplitMix64,
    /// Reads submitted so far (submit calls, failed ones included).
    submitted: u64,
    /// Reap calls so far.
    reaped: u64,
    /// Faults to apply when the inner engine completes these tags.
    marks: Vec<(u64, Fault)>,
    /// Completions held back: (completion, reaps left before release).
    held: Vec<(Completion, u32)>,
    scratch: Vec<Completion>,
}

impl FaultyEngine {
    /// Wraps `inner`, injecting the faults `plan` draws.
    pub fn new(inner: Box<dyn Engine>, plan: FaultPlan) -> Self {
        tracing::warn!(target: "engram_store", "injecting I/O faults into {}: {plan}", inner.name());
        let rng = SplitMix64(plan.seed ^ 0xFA17_FA17);
        Self {
            inner,
            plan,
            rng,
            submitted: 0,
            reaped: 0,
            marks: Vec::with_capacity(64),
            held: Vec::with_capacity(64),
            scratch: Vec::with_capacity(64),
        }
    }

    fn apply(&mut self, mut c: Completion) {
        let mut ticks = 0;
        if let Some(k) = self.marks.iter().position(|(t, _)| *t == c.tag) {
            let (_, fault) = self.marks.swap_remove(k);
            match fault {
                Fault::Short => {
                    if let Ok(n) = c.result {
                        // What a short read leaves past its end is whatever the slot held.
                        c.lease.bytes_mut()[n / 2..n].fill(0xA5);
                        c.result = Ok(n / 2);
                    }
                }
                Fault::Corrupt => {
                    if let Ok(n) = c.result
                        && n > 0
                    {
                        let at = self.rng.below(n as u64) as usize;
                        c.lease.bytes_mut()[at] ^= 0x40;
                    }
                }
                Fault::Delay => ticks = 1 + self.rng.below(3) as u32,
                Fault::Eio | Fault::Submit | Fault::Reap => {}
            }
        }
        self.held.push((c, ticks));
    }

    fn release(&mut self, out: &mut Vec<Completion>) {
        if self.plan.reorder && self.held.len() > 1 {
            // Fisher-Yates with the plan's generator.
            for i in (1..self.held.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.held.swap(i, j);
            }
        }
        let mut k = 0;
        while k < self.held.len() {
            if self.held[k].1 == 0 {
                out.push(self.held.swap_remove(k).0);
            } else {
                self.held[k].1 -= 1;
                k += 1;
            }
        }
    }
}

impl Engine for FaultyEngine {
    /// The wrapped engine's name: errors name the engine that was failed.
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)> {
        let index = self.submitted;
        self.submitted += 1;
        if self.plan.engine_fault(Fault::Submit, index) {
            let why = format!("injected failure of submit {index} (submit@{index})");
            return Err((lease, EngineError::Broken(why)));
        }
        match self.plan.choose(index, &mut self.rng) {
            Some(Fault::Eio) => {
                self.held.push((
                    Completion {
                        tag: req.tag,
                        lease,
                        result: Err(std::io::Error::from_raw_os_error(5)),
                    },
                    0,
                ));
                Ok(())
            }
            Some(fault) => {
                self.marks.push((req.tag, fault));
                self.inner.submit(req, lease).inspect_err(|_| {
                    self.marks.pop();
                })
            }
            None => self.inner.submit(req, lease),
        }
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        self.inner.flush()
    }

    fn reap(
        &mut self,
        min_complete: usize,
        timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        let index = self.reaped;
        self.reaped += 1;
        if self.plan.engine_fault(Fault::Reap, index) {
            let why = format!("injected failure of reap {index} (reap@{index})");
            return Err(EngineError::Broken(why));
        }
        let start = out.len();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let ready = self.held.iter().filter(|h| h.1 == 0).count();
            let block = out.len() - start + ready < min_complete && self.inner.in_flight() > 0;
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let mut scratch = std::mem::take(&mut self.scratch);
            let r = self.inner.reap(usize::from(block), left, &mut scratch);
            for c in scratch.drain(..) {
                self.apply(c);
            }
            self.scratch = scratch;
            r?;
            self.release(out);
            let got = out.len() - start;
            let timed_out = deadline.is_some_and(|d| std::time::Instant::now() >= d);
            if got >= min_complete
                || timed_out
                || (self.inner.in_flight() == 0 && self.held.is_empty())
            {
                return Ok(());
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_strictly() {
        let p = FaultPlan::parse("seed=7,eio=0.5,reorder,short@3,delay=0.25,submit@2,reap@9")
            .expect("valid");
        assert_eq!(p.seed, 7);
        assert_eq!(p.eio, 0.5);
        assert!(p.reorder);
        assert_eq!(
            p.at,
            vec![(3, Fault::Short), (2, Fault::Submit), (9, Fault::Reap)]
        );
        assert!(p.breaks_engine());
        assert_eq!(FaultPlan::parse(&p.to_string()).expect("round trip"), p);
        let rebuilt = p.for_rebuilt_engine();
        assert_eq!(rebuilt.at, vec![(3, Fault::Short)]);
        assert!(!rebuilt.breaks_engine());
        for bad in [
            "eio=2",
            "bogus=0.1",
            "eio@x",
            "nope@1",
            "reorderx",
            "seed=-1",
            "submit=0.5",
            "reap@",
        ] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }
}
