//! `kurz-api [serve|migrate|check] [--config conf/api.yaml]`

use kurz_api::config::ApiConfig;
use kurz_api::startup::{self, Application};
use kurz_common::env::ProcessEnv;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: kurz-api [serve|migrate|check] [--config FILE]\n\
       kurz-api sample DIR [USERS URLS EVENTS]\n\
  serve    migrate, then serve (default)\n\
  migrate  apply pending migrations and exit\n\
  check    validate the configuration and exit\n\
  sample   write users.csv, urls.csv, events.csv (seed format) into DIR\n\
  FILE defaults to $KURZ_API_CONFIG, else conf/api.yaml when present";

fn main() -> ExitCode {
    let mut command = "serve".to_owned();
    let mut config_path: Option<PathBuf> = std::env::var_os("KURZ_API_CONFIG").map(PathBuf::from);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("sample") {
        return sample(&argv[1..]);
    }
    let mut args = argv.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => return fail(USAGE),
            },
            "serve" | "migrate" | "check" => command = arg,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if config_path.is_none() && std::path::Path::new("conf/api.yaml").exists() {
        config_path = Some(PathBuf::from("conf/api.yaml"));
    }
    let config = match ApiConfig::load(config_path.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&format!("kurz-api: invalid configuration: {e}")),
    };
    kurz_common::logging::init("kurz-api", &config.log_level);
    if command == "check" {
        println!("kurz-api: configuration ok");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("kurz-api: cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        if command == "migrate" {
            let pool = startup::build_pool(&config)?;
            let mut client = pool.get().await.map_err(|e| format!("database: {e}"))?;
            return kurz_api::migrate::run(&mut client).await;
        }
        let app = Application::build(config).await?;
        log::info!(listen = app.addr().to_string(), admin = app.admin_addr().to_string(); "kurz-api listening");
        app.run_until(startup::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(error = e.as_str(); "kurz-api stopped with an error");
            fail(&format!("kurz-api: {e}"))
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}

/// `sample DIR [USERS URLS EVENTS]`.
fn sample(args: &[String]) -> ExitCode {
    let Some(dir) = args.first() else {
        return fail(USAGE);
    };
    let num = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{v:?} is not a count\n{USAGE}"))
        })
    };
    let sizes = match (num(1, 400), num(2, 2000), num(3, 3400)) {
        (Ok(users), Ok(urls), Ok(events)) => kurz_api::sample::Sizes {
            users,
            urls,
            events,
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(&e),
    };
    if sizes.users == 0 && sizes.urls > 0 {
        return fail("links need at least one user");
    }
    match kurz_api::sample::write(std::path::Path::new(dir), sizes, 42) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("kurz-api sample: {e}")),
    }
}
