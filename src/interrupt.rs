//! The global interrupt flag: Ctrl-C sets it, long-running work checks it.
//!
//! Signals are process-wide, so the flag is too. The Rhai engine checks it between operations
//! (`on_progress`), and engine code that runs for long without returning to Rhai (a generation
//! loop, a batch of forwards) calls [`check`] between steps, so that Ctrl-C stops it cleanly and
//! leaves the model usable.
//!
//! The REPL [`clear`]s the flag before each command; `mlxi run` and `mlxi -e` let a second Ctrl-C
//! end the process at once (for work stuck inside a single MLX call).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static EXIT_ON_SECOND: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C was pressed since the last [`clear`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Asks running work to stop, as Ctrl-C does.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Forgets an earlier request (before running the next command).
pub fn clear() {
    REQUESTED.store(false, Ordering::Relaxed);
}

/// `Err(Error::Interrupted)` if Ctrl-C was pressed: call this between steps of long work.
pub fn check() -> crate::Result<()> {
    if requested() {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Ends the process now with status 130: no destructors, no waiting for the MLX computation in
/// progress (`std::process::exit` runs C `atexit` handlers, which wait for MLX's and OpenBLAS's
/// worker threads, i.e. for the running computation to finish).
fn exit_at_once() -> ! {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "interrupted (second Ctrl-C: mlxi stopped at once)");
    let _ = err.flush();
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process without running any handler; nothing is left to flush.
    unsafe { libc::_exit(130) }
}

/// Installs the Ctrl-C (SIGINT) handler that sets the flag. With `exit_on_second`, a Ctrl-C that
/// arrives while the flag is still set ends the process with status 130, for work that does not
/// reach a check. Calling it again only changes `exit_on_second`.
pub fn install_handler(exit_on_second: bool) -> crate::Result<()> {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    EXIT_ON_SECOND.store(exit_on_second, Ordering::Relaxed);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) && EXIT_ON_SECOND.load(Ordering::Relaxed) {
            exit_at_once();
        }
    })
    .map_err(|e| crate::Error::Invalid(format!("cannot install the Ctrl-C handler: {e}")))
}
