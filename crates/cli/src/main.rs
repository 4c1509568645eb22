//! `worldcompass`: see `worldcompass --help`. Parses the command line, runs
//! it ([`worldcompass::run`]), and on error prints the whole error chain,
//! credentials redacted, and exits non-zero.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Behave like a Unix tool when piped into `head`: exit quietly on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Keep freed tensor buffers in the heap instead of returning them to
        // the kernel: candle allocates a buffer per op, and re-faulting fresh
        // pages cost about a tenth of a training step.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WORLDCOMPASS_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match worldcompass::run(worldcompass::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, each cause on its own line, credentials redacted.
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{}", wc_store::redact(&msg));
            ExitCode::FAILURE
        }
    }
}
