use std::path::PathBuf;
use std::process::ExitCode;

use shared::config::Settings;

fn usage() -> &'static str {
    "usage: dispatcher [--config FILE] [--check-config]\n\
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if check_only {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let checked =
            runtime.block_on(async { dispatcher::app::build_worker(&settings, rx).map(|_| ()) });
        return match checked {
            Ok(()) => {
                println!(
                    "configuration is valid ({} tenants, templates compiled, providers checked)",
                    settings.tenants.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    shared::telemetry::init(&settings.log);
    runtime.block_on(async move {
        let running = match dispatcher::app::start(settings).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "dispatcher cannot start");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("signal received: stopping");
        running.stop().await;
        tracing::info!("dispatcher stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
