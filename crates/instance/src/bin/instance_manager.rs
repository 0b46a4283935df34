//! The instance manager as a bare program, for the integration tests (they kill it with
//! `kill -9` and start another): `instance_manager CONFIG.json [--managed [--lease]]`, and its
//! dead man's switch (`instance_manager deadman --data-dir DIR`). The real entry
//! point is `stator instance --config FILE` (`--pod --managed` in the operator's pods).

use std::process::ExitCode;

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Test logs are files: colours only on a terminal without NO_COLOR.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    if let [_, sub, flag, dir] = args.as_slice()
        && sub == stator_instance::deadman::SUBCOMMAND
        && flag == "--data-dir"
    {
        stator_instance::deadman::run(
            std::path::Path::new(dir),
            std::io::BufReader::new(std::io::stdin()),
        );
        return ExitCode::SUCCESS;
    }
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: instance_manager CONFIG.json [--managed [--lease]]");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let mode = match rest.as_slice() {
        [] => stator_instance::Mode::Plain,
        ["--managed"] => stator_instance::Mode::Managed,
        ["--managed", "--lease"] => stator_instance::Mode::Leased,
        other => {
            eprintln!(
                "error: unknown arguments {other:?}; usage: instance_manager CONFIG.json [--managed [--lease]]"
            );
            return ExitCode::from(2);
        }
    };
    let config = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stator_instance::run_in(config, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
