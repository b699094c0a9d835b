//! How `engram-build` talks to its user: progress bars on a terminal, plain log lines
//! otherwise, JSON Lines under `--json` (`begin` / `progress` / `warning` / `summary`), and
//! nothing but errors under `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::json_line;

/// Output mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars (a terminal).
    Bars,
    /// Plain log lines (not a terminal).
    Log,
    /// JSON Lines (`--json`).
    Json,
    /// Errors only (`--quiet`).
    Quiet,
}

impl Mode {
    /// Picks the mode from the flags and whether stderr is a terminal.
    pub fn choose(json: bool, quiet: bool) -> Self {
        if quiet {
            Mode::Quiet
        } else if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Log
        }
    }
}

/// One phase of work with a known total.
#[derive(Debug)]
pub struct Phase {
    mode: Mode,
    name: &'static str,
    unit: &'static str,
    total: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

/// Interval between log lines and JSON progress records.
const LOG_EVERY: Duration = Duration::from_secs(2);

impl Phase {
    /// Starts a phase of `total` units (`bytes` or `rows`).
    pub fn start(mode: Mode, name: &'static str, unit: &'static str, total: u64) -> Self {
        let bar = (mode == Mode::Bars).then(|| {
            let template = if unit == "bytes" {
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}"
            } else {
                "{prefix:>8} [{bar:30}] {human_pos}/{human_len} {unit} {per_sec} {msg} ETA {eta}"
            };
            let style = ProgressStyle::with_template(&template.replace("{unit}", unit))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = ProgressBar::new(total).with_style(style).with_prefix(name);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            mode,
            name,
            unit,
            total,
            started: now,
            last_log: now,
            bar,
        }
    }

    /// Reports `done` units and a short rate message (e.g. tokens/s).
    pub fn update(&mut self, done: u64, msg: &str) {
        match self.mode {
            Mode::Bars => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                    bar.set_message(msg.to_owned());
                }
            }
            Mode::Log | Mode::Json if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                self.emit(done, msg);
            }
            _ => {}
        }
    }

    fn emit(&self, done: u64, msg: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        if self.mode == Mode::Json {
            json_line(
                "progress",
                &serde_json::json!({
                    "phase": self.name, "done": done, "total": self.total,
                    "unit": self.unit, "seconds": secs, "message": msg,
                }),
            );
        } else {
            let pct = if self.total > 0 {
                100.0 * done as f64 / self.total as f64
            } else {
                100.0
            };
            eprintln!(
                "{}: {done}/{} {} ({pct:.1}%) {msg} [{secs:.1} s]",
                self.name, self.total, self.unit
            );
        }
    }

    /// Ends the phase; returns its wall time in seconds.
    pub fn finish(self, done: u64, msg: &str) -> f64 {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.finish_with_message(msg.to_owned());
        } else if matches!(self.mode, Mode::Log | Mode::Json) {
            self.emit(done, msg);
        }
        self.started.elapsed().as_secs_f64()
    }
}

/// Emits a warning in the current mode.
pub fn warning(mode: Mode, what: &str, why: &str) {
    match mode {
        Mode::Json => json_line("warning", &serde_json::json!({ "what": what, "why": why })),
        Mode::Quiet => {}
        Mode::Bars | Mode::Log => eprintln!("warning: {what}: {why}"),
    }
}
