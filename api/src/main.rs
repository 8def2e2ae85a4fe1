//! `kurz-api [serve|migrate|check|sample] [--config conf/api.yaml]` (see `--help`)

use kurz_api::config::ApiConfig;
use kurz_api::startup::{self, Application};
use kurz_common::env::ProcessEnv;
use std::path::PathBuf;
use std::process::ExitCode;

// Each request allocates its JSON body, its response and its statement's parameters; glibc's
// malloc was about a fifth of the edge's CPU for the same kind of churn (docs/capacity.md).
// mimalloc costs the API some resident memory (~45 MiB more after the create bench).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The kurz REST API: users, links, events, auth; the edge's upstream.
#[derive(clap::Parser)]
#[command(name = "kurz-api", version)]
struct Args {
    /// Configuration file (default: conf/api.yaml when present).
    #[arg(short, long = "config", env = "KURZ_API_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, PartialEq)]
enum Command {
    /// Migrate, then serve (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Validate the configuration and exit.
    Check,
    /// Write users.csv, urls.csv, events.csv (the seed format) into DIR.
    Sample {
        dir: PathBuf,
        #[arg(default_value_t = 400)]
        users: usize,
        #[arg(default_value_t = 2000)]
        urls: usize,
        #[arg(default_value_t = 3400)]
        events: usize,
    },
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let command = args.command.unwrap_or(Command::Serve);
    if let Command::Sample {
        dir,
        users,
        urls,
        events,
    } = command
    {
        return sample(&dir, users, urls, events);
    }
    let config_path = args
        .config
        .or_else(|| Some(PathBuf::from("conf/api.yaml")).filter(|p| p.exists()));
    let config = match ApiConfig::load(config_path.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&format!("kurz-api: invalid configuration: {e}")),
    };
    kurz_common::logging::init("kurz-api", &config.log_level);
    if command == Command::Check {
        println!("kurz-api: configuration ok");
        return ExitCode::SUCCESS;
    }
    // Before any socket is opened (see `kurz_common::open_files`).
    match kurz_common::open_files::raise_to_hard() {
        Ok((before, now)) if before != now => {
            log::info!(before = before, now = now; "open-file limit raised to the hard limit")
        }
        Ok(_) => {}
        Err(e) => log::warn!(error = e.to_string(); "cannot raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("kurz-api: cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        let mut stop = Box::pin(startup::shutdown_signal());
        if command == Command::Migrate {
            // A migration Job's process is PID 1 too, and may wait long on another replica's
            // advisory lock. Stopped, it says the migrations did not finish.
            const STOPPED: &str = "stopped by a signal before the migrations finished";
            let pool = startup::build_pool(&config)?;
            let mut client = tokio::select! {
                got = pool.get() => got.map_err(|e| format!("database: {e}"))?,
                () = &mut stop => return Err(STOPPED.into()),
            };
            let cancel = client.cancel_token();
            return tokio::select! {
                done = kurz_api::migrate::run(&mut client) => done,
                () = &mut stop => {
                    // A dropped connection leaves its statement running on the server, holding
                    // its table's lock until it ends: it is cancelled there too.
                    if let Ok((_, tls)) = kurz_api::db::tls::parse(&config.database.url) {
                        let _ = cancel.cancel_query(tls).await;
                    }
                    Err(STOPPED.into())
                }
            };
        }
        let app = tokio::select! {
            app = Application::build(config) => app?,
            () = &mut stop => {
                log::info!("kurz-api stopped before it served");
                return Ok(());
            }
        };
        log::info!(listen = app.addr().to_string(), admin = app.admin_addr().to_string(); "kurz-api listening");
        app.run_until(stop).await
    });
    match result {
        Ok(()) => {
            kurz_common::logging::flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!(error = e.as_str(); "kurz-api stopped with an error");
            fail(&format!("kurz-api: {e}"))
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    // After the log lines that led here, not among them.
    kurz_common::logging::flush();
    eprintln!("{msg}");
    ExitCode::FAILURE
}

fn sample(dir: &std::path::Path, users: usize, urls: usize, events: usize) -> ExitCode {
    if users == 0 && urls > 0 {
        return fail("links need at least one user");
    }
    let sizes = kurz_api::sample::Sizes {
        users,
        urls,
        events,
    };
    match kurz_api::sample::write(dir, sizes, 42) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("kurz-api sample: {e}")),
    }
}
