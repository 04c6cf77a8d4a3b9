use std::path::PathBuf;
use std::process::ExitCode;

use shared::config::Settings;

// glibc malloc was ~15% of the ingest's CPU under load (perf, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> &'static str {
    "usage: ingest [--config FILE] [--check-config]\n\
     Configuration: FILE (or $VESTNIK_CONFIG), overridden by VESTNIK_* variables;\n\
     see deploy/vestnik.example.toml."
}

fn main() -> ExitCode {
    let mut config: Option<PathBuf> = None;
    let mut check_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--check-config" => check_only = true,
            "--help" | "-h" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!(
            "configuration is valid ({} tenants)",
            settings.tenants.len()
        );
        return ExitCode::SUCCESS;
    }
    shared::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ingest-io")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match ingest::app::start(settings, true).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "ingest cannot start");
                return ExitCode::FAILURE;
            }
        };
        match running.wait().await {
            Ok(()) => {
                tracing::info!("ingest stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
