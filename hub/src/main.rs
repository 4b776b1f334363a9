//! `carrel-hub`: wiring only. See the library for the parts.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = carrel_hub::cli::Cli::parse();
    // A listing piped into `head` ends quietly when the reader stops, as Unix tools
    // do (SIGPIPE itself stays ignored: see the module).
    carrel_proto::closed_stdout::end_quietly_when_stdout_closes();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(carrel_hub::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A refusal from the hub reads as its message and gRPC code, not as a debug dump.
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {} ({:?})", status.message(), status.code()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
