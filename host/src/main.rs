//! The `trellis` binary: parse arguments, set up logging, run the subcommand, render any error
//! once, and pick the exit code.

use std::process::ExitCode;

use clap::Parser;
use trellis_host::{Cli, LogFormat};

/// mimalloc: requests allocate many small JSON values on several threads; glibc's allocator
/// spent a tenth of the host's time on the HTTP benchmark in `malloc`/`free`/consolidation.
#[global_allocator]
static GLOBAL: trellis_host::Allocator = trellis_host::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(trellis_host::run_cli(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            render_error(&err);
            ExitCode::from(trellis_host::exit_code(&err))
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`), `--log-format` picks the shape.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => {
            let color = std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(color).init()
        }
    }
}

/// Draws the error once: its message and causes, the lines of a file at fault, and its help.
fn render_error(err: &anyhow::Error) {
    let color = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprint!("{}", trellis_host::render_error(err, color));
}
