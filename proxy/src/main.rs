//! `kurz-proxy [-c conf/proxy.yaml] [--check] [--upgrade]`

use kurz_common::env::ProcessEnv;
use kurz_proxy::config::ProxyConfig;
use std::path::PathBuf;
use std::process::ExitCode;

// glibc malloc was about a fifth of the edge's CPU on the redirect path (perf, see
// docs/capacity.md); mimalloc's per-thread pages take most of that away and return memory of
// closed connections to the OS sooner.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The kurz edge: TLS, rate limits, redirects from Redis, and the API pool behind it.
#[derive(clap::Parser)]
#[command(name = "kurz-proxy", version)]
struct Args {
    /// Configuration file.
    #[arg(
        short,
        long = "config",
        env = "KURZ_PROXY_CONFIG",
        default_value = "conf/proxy.yaml"
    )]
    config: PathBuf,
    /// Validate the configuration (and TLS files) and exit, like `nginx -t`.
    #[arg(short = 't', long)]
    check: bool,
    /// Take the listening sockets over from a running instance (graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    kurz_proxy::reload::note_early_hangups();
    let Args {
        config: path,
        check,
        upgrade,
    } = <Args as clap::Parser>::parse();
    let (cfg, file) = match ProxyConfig::load_with_file(&path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&format!("kurz-proxy: invalid configuration: {e}")),
    };
    let cert = if cfg.listen.https.is_empty() {
        None
    } else {
        match kurz_proxy::tls_cert::load(&cfg.listen.tls_cert, &cfg.listen.tls_key) {
            Ok(loaded) => match loaded.in_force(chrono::Utc::now().timestamp()) {
                // --check answers for the reload, which would refuse the pair.
                Err(why) if check => {
                    return fail(&format!("kurz-proxy: invalid configuration: {why}"))
                }
                // At start served all the same: an edge that did not start would stop plain
                // HTTP too, and a reload takes the renewed pair.
                Err(why) => {
                    eprintln!("kurz-proxy: warning: {why}; clients will refuse it");
                    Some(loaded)
                }
                Ok(()) => Some(loaded),
            },
            Err(e) => return fail(&format!("kurz-proxy: invalid configuration: {e}")),
        }
    };
    if check {
        println!("kurz-proxy: configuration {} ok", path.display());
        return ExitCode::SUCCESS;
    }
    kurz_common::logging::init("kurz-proxy", &cfg.log.level);
    match kurz_proxy::server::run(cfg, file, cert, &path, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("kurz-proxy: {e}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    // After the log lines that led here, not among them.
    kurz_common::logging::flush();
    eprintln!("{msg}");
    ExitCode::FAILURE
}
