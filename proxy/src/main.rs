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

const USAGE: &str = "usage: kurz-proxy [-c FILE] [--check] [--upgrade]\n\
  -c, --config FILE  configuration (default $KURZ_PROXY_CONFIG, else conf/proxy.yaml)\n\
  --check            validate the configuration (and TLS files) and exit, like nginx -t\n\
  --upgrade          take the listening sockets over from a running instance (graceful upgrade)";

fn main() -> ExitCode {
    let mut path = std::env::var_os("KURZ_PROXY_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("conf/proxy.yaml"));
    let (mut check, mut upgrade) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => return fail(USAGE),
            },
            "--check" | "-t" => check = true,
            "--upgrade" | "-u" => upgrade = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let cfg = match ProxyConfig::load(&path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&format!("kurz-proxy: invalid configuration: {e}")),
    };
    if !cfg.listen.https.is_empty() {
        if let Err(e) = kurz_proxy::server::tls_settings(&cfg) {
            return fail(&format!("kurz-proxy: invalid configuration: {e}"));
        }
    }
    if check {
        println!("kurz-proxy: configuration {} ok", path.display());
        return ExitCode::SUCCESS;
    }
    kurz_common::logging::init("kurz-proxy", &cfg.log.level);
    match kurz_proxy::server::run(cfg, &path, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("kurz-proxy: {e}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}
