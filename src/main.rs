//! The `holistream` command line: parses arguments, sets up logging, and
//! calls into the library.
//!
//! Exit codes: 0 success; 2 a usage error (clap) or a configuration error
//! (unreadable, malformed or invalid config: one line on stderr, so that an
//! operator's supervisor tells "fix the config" from "it crashed"); 1 any
//! other failure.
//!
//! Thin: no logic that a test would need; everything runs in
//! `holistream::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use holistream::commands;
use holistream::config::ConfigError;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "holistream",
    version,
    about = "Real-time MediaPipe Holistic inference server"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the WebSocket API and the web demo.
    Serve(holistream::config::ServeArgs),
    /// Real WebSocket clients streaming JPEG frames; prints latency, fps, drops.
    Loadgen(commands::loadgen::LoadgenArgs),
    /// Run remote inference workers for `serve --pool redis` gateways.
    Worker(holistream::config::WorkerArgs),
    /// Exit 0 if the local server answers `/healthz` (container HEALTHCHECK).
    Healthcheck(commands::healthcheck::HealthcheckArgs),
    /// Print the Holistic landmarks of images as JSON (optionally drawn).
    Infer(commands::infer::InferArgs),
    /// Track people through an MJPEG clip; prints one JSON line per frame.
    Track(commands::track::TrackArgs),
    /// Compare with MediaPipe's golden outputs; exits non-zero on a missed threshold.
    Parity(commands::parity::ParityArgs),
    /// Time each net and whole frames, beside MediaPipe's numbers.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // `HOLISTREAM_ISA` is read here, at the edge: a value this CPU cannot
    // honour is a configuration error before anything runs, not a panic in
    // the first forward pass.
    match holistream_nets::Isa::selected() {
        Ok(isa) => tracing::debug!(isa = isa.name(), "fused kernels' instruction set"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let outcome = match cli.command {
        Command::Serve(args) => commands::serve::serve(&args),
        Command::Loadgen(args) => commands::loadgen::main(args),
        Command::Worker(args) => commands::worker::run(&args).map_err(anyhow::Error::from),
        Command::Healthcheck(args) => {
            commands::healthcheck::check(&args).map_err(anyhow::Error::from)
        }
        Command::Infer(args) => commands::infer::infer(&args),
        Command::Track(args) => commands::track::track(&args),
        Command::Parity(args) => commands::parity::parity(&args),
        Command::Bench(args) => commands::bench::bench(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.chain().find_map(|c| c.downcast_ref::<ConfigError>()) {
            Some(config) => {
                eprintln!("error: {}", one_line(config));
                ExitCode::from(2)
            }
            // As `fn main() -> anyhow::Result<()>` reports it.
            None => {
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A configuration error on one line. A TOML parse error displays over
/// several lines (a source excerpt with a caret under the column); its
/// message lines are kept, joined with "; ", and the excerpt dropped: the
/// position is already in its first line ("at line L, column C").
fn one_line(e: &ConfigError) -> String {
    let excerpt = |l: &str| {
        l.split_once('|')
            .is_some_and(|(gutter, _)| gutter.trim().chars().all(|c| c.is_ascii_digit()))
    };
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !excerpt(l))
        .collect::<Vec<_>>()
        .join("; ")
}
