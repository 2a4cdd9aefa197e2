//! The `holistream` command line: parses arguments, sets up logging, and
//! calls into the library.

use clap::{Parser, Subcommand};
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
    Loadgen(holistream::loadgen::LoadgenArgs),
    /// Run remote inference workers for `serve --pool redis` gateways.
    Worker(holistream::worker::WorkerArgs),
    /// Exit 0 if the local server answers `/healthz` (container HEALTHCHECK).
    Healthcheck(holistream::healthcheck::HealthcheckArgs),
    /// Print the Holistic landmarks of images as JSON (optionally drawn).
    Infer(holistream::model::cli::InferArgs),
    /// Compare with MediaPipe's golden outputs; exits non-zero on a missed threshold.
    Parity(holistream::model::cli::ParityArgs),
    /// Time each net and whole frames, beside MediaPipe's numbers.
    Bench(holistream::model::cli::BenchArgs),
}

fn main() -> anyhow::Result<()> {
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
    match cli.command {
        Command::Serve(args) => holistream::http::serve(&args),
        Command::Loadgen(args) => holistream::loadgen::main(args),
        Command::Worker(args) => Ok(holistream::worker::run(&args)?),
        Command::Healthcheck(args) => Ok(holistream::healthcheck::check(&args)?),
        Command::Infer(args) => holistream::model::cli::infer(&args),
        Command::Parity(args) => holistream::model::cli::parity(&args),
        Command::Bench(args) => holistream::model::cli::bench(&args),
    }
}
