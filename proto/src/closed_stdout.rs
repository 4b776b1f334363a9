//! How both command-line tools end when the reader of their output goes away
//! (`carrel-hub audit list | head -1`): quietly, as Unix tools do.
//!
//! Rust starts every program with SIGPIPE ignored, so a write to a closed pipe fails
//! with `EPIPE` and `println!` panics ("failed printing to stdout: Broken pipe").
//! Restoring the default SIGPIPE instead would also let a network peer that resets
//! its connection while the tool writes to it (rustls writes with `writev`, which
//! raises SIGPIPE) kill the tool without a word, in the middle of a signature.
//! So SIGPIPE stays ignored, and [`end_quietly_when_stdout_closes`] turns that one
//! panic into the status a shell reports for a tool SIGPIPE stopped.

/// The exit status of a tool whose standard output was closed: 128 + SIGPIPE (13),
/// what a shell shows for `cat big | head -1`'s `cat`.
pub const CLOSED_STDOUT_STATUS: i32 = 141;

/// Installs a panic hook: a panic from printing to a closed standard output exits
/// the process with [`CLOSED_STDOUT_STATUS`] and prints nothing; every other panic
/// is reported by the hook that was there before.
pub fn end_quietly_when_stdout_closes() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_closed_stdout(message) {
            std::process::exit(CLOSED_STDOUT_STATUS);
        }
        previous(info)
    }));
}

/// Whether a panic message is std's for printing to a closed standard output.
fn is_closed_stdout(message: &str) -> bool {
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_quiet() {
        assert!(is_closed_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        // A full disk or a closed stderr is still an error worth a report.
        assert!(!is_closed_stdout(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_closed_stdout(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout("index out of bounds"));
    }
}
