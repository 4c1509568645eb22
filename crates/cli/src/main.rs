//! `worldcompass`: see `worldcompass --help`. Parses the command line, runs
//! it ([`worldcompass::run`]), and on error prints the whole error chain,
//! credentials redacted, and exits non-zero.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Behave like a Unix tool when piped into `head`: exit quietly on a closed pipe.
    // SAFETY: process settings made before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Keep freed tensor buffers in the heap instead of returning them to
        // the kernel: candle allocates a buffer per op, and re-faulting fresh
        // pages cost about a tenth of a training step.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // candle runs its own elementwise CPU ops on a second thread pool
        // beside rayon's (which runs the matrix products and wc_model's
        // fused ops), and its workers spin after every op on the cores
        // rayon's threads need: on 2 cores a sampler step took 0.011-0.022 s
        // with it and 0.011-0.014 s without, a training step 0.129-0.141 s
        // and 0.118-0.132 s (docs/results/2026-11-30-fused-cpu-ops.md).
        // Unless the user sets CANDLE_NUM_THREADS, candle's own ops run on
        // the calling thread. Child processes inherit the choice.
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
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
