//! `progress(n, label)`: a progress bar with an ETA for a script's long loop, drawn on stderr
//! with indicatif (hidden when stderr is not a terminal, so logs and pipes stay clean).
//!
//! Bars live in one thread-local `MultiProgress`, so nested loops show one line each, and
//! script `print`s are written above the bars instead of through them ([`suspend`]). A
//! `tick` also checks for Ctrl-C, so a loop stops at the next step.

use std::cell::RefCell;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rhai::plugin::*;
use rhai::{Engine, INT};

use super::RhaiResult;
use crate::{interrupt, Error};

thread_local! {
    /// Every bar of this thread, drawn together on stderr.
    static BARS: RefCell<Option<MultiProgress>> = const { RefCell::new(None) };
}

/// Runs `f` (which writes to the terminal) with the progress bars cleared, then redraws them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let multi = BARS.with(|b| b.borrow().clone());
    match multi {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

fn multi() -> MultiProgress {
    BARS.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(MultiProgress::new)
            .clone()
    })
}

/// A script's progress bar. Cloning shares the bar.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    label: String,
}

impl Progress {
    /// A bar of `n` steps named `label`, added below any bars already shown.
    pub fn new(n: u64, label: &str) -> Self {
        let bar = multi().add(ProgressBar::new(n));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        Progress {
            bar,
            label: label.to_string(),
        }
    }

    /// Advances the bar `k` steps (from any thread).
    pub fn inc(&self, k: u64) {
        self.bar.inc(k);
    }

    /// Sets the text shown after the bar (e.g. the current loss).
    pub fn set_message(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Removes the bar from the screen, for engine work that reports its own result.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
        multi().remove(&self.bar);
    }

    /// Ends the bar: it leaves the set of live bars (so it is never redrawn, e.g. over the
    /// REPL's next input) and one plain line with its total and time is printed in its place.
    pub fn finish(&self) {
        if self.bar.is_finished() {
            return;
        }
        let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let elapsed = indicatif::HumanDuration(self.bar.elapsed());
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!("{} ", self.label)
        };
        let m = multi();
        self.bar.finish_and_clear();
        m.remove(&self.bar);
        // Printed above the live bars; nothing when stderr is not a terminal (bars are hidden).
        let _ = m.println(format!("{label}{pos}/{len} done in {elapsed}"));
    }

    pub fn summary(&self) -> String {
        let name = if self.label.is_empty() {
            String::new()
        } else {
            format!("{} ", self.label)
        };
        format!(
            "Progress({name}{}/{}{})",
            self.bar.position(),
            self.bar.length().unwrap_or(0),
            if self.bar.is_finished() {
                ", finished"
            } else {
                ""
            }
        )
    }
}

/// Takes every bar off the screen and forgets them: the REPL calls it after each input, so
/// that a bar left unfinished (an error, Ctrl-C) is not redrawn over what comes next.
pub fn clear_all() {
    if let Some(m) = BARS.with(|b| b.borrow_mut().take()) {
        let _ = m.clear();
    }
}

fn steps(n: INT, verb: &str) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| Error::Invalid(format!("{verb}: needs a count >= 0, got {n}")))
}

#[export_module]
mod progress_functions {
    use super::*;

    pub type Progress = super::Progress;

    /// A progress bar of `n` steps with an ETA, drawn on stderr (hidden when stderr is not a
    /// terminal). Call `tick(p)` after each step and `finish(p)` at the end.
    ///
    /// Example: `let p = progress(n_layers, "layers"); for l in 0..n_layers { ...; p.tick(); } p.finish();`
    #[rhai_fn(name = "progress", return_raw)]
    pub fn progress_labelled(n: INT, label: &str) -> RhaiResult<Progress> {
        Ok(super::Progress::new(steps(n, "progress")?, label))
    }

    /// A progress bar of `n` steps without a label.
    ///
    /// Example: `let p = progress(100);`
    #[rhai_fn(name = "progress", return_raw)]
    pub fn progress_plain(n: INT) -> RhaiResult<Progress> {
        Ok(super::Progress::new(steps(n, "progress")?, ""))
    }

    /// Advances the bar one step (and stops the script here if Ctrl-C was pressed).
    ///
    /// Example: `p.tick()`
    #[rhai_fn(name = "tick", return_raw)]
    pub fn tick(p: &mut Progress) -> RhaiResult<()> {
        p.bar.inc(1);
        Ok(interrupt::check()?)
    }

    /// Advances the bar `k` steps.
    ///
    /// Example: `p.tick(batch.len())`
    #[rhai_fn(name = "tick", return_raw)]
    pub fn tick_by(p: &mut Progress, k: INT) -> RhaiResult<()> {
        p.bar.inc(steps(k, "tick")?);
        Ok(interrupt::check()?)
    }

    /// Shows `text` after the bar (what the current step is doing).
    ///
    /// Example: `p.message(`layer ${l}`)`
    #[rhai_fn(name = "message")]
    pub fn message(p: &mut Progress, text: &str) {
        p.bar.set_message(text.to_string());
    }

    /// Marks the bar finished: it is replaced by one line with the total and the time taken,
    /// and never redrawn.
    ///
    /// Example: `p.finish()`
    #[rhai_fn(name = "finish")]
    pub fn finish(p: &mut Progress) {
        super::Progress::finish(p);
    }

    /// Steps done so far.
    ///
    /// Example: `p.pos  // 3`
    #[rhai_fn(get = "pos", pure)]
    pub fn pos(p: &mut Progress) -> INT {
        p.bar.position() as INT
    }

    /// The number of steps.
    ///
    /// Example: `p.len  // 30`
    #[rhai_fn(get = "len", pure)]
    pub fn len(p: &mut Progress) -> INT {
        p.bar.length().unwrap_or(0) as INT
    }

    /// `Progress(label 3/30)`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(p: &mut Progress) -> String {
        p.summary()
    }
}

/// Registers `Progress` and `progress(n, label)`.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Progress>("Progress");
    engine.register_global_module(exported_module!(progress_functions).into());
}
