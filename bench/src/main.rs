//! `kurz-bench`: runs one scenario file against a target and prints a JSON summary.
//!
//! ```text
//! kurz-bench --scenario bench/scenarios/mixed.yaml --target http://127.0.0.1:8180 \
//!            --urls-csv target/bench/data/urls.csv [--duration 5] [--out result.json]
//! ```
//! `bench/run` drives it (and wrk, for raw redirect throughput and the baselines).

mod keys;
mod load;
mod raw;
mod scenario;

use keys::Codes;
use load::Target;
use scenario::{Driver, Keys, Load, Scenario};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    /// Print the scenario's metadata as JSON and exit (for `bench/run`).
    meta: bool,
    scenario: PathBuf,
    target: String,
    urls_csv: PathBuf,
    duration: Option<u64>,
    out: Option<PathBuf>,
    /// Overrides the scenario's idle connections (smoke runs).
    idle: Option<usize>,
    /// Multiplies every open-loop rate (smoke runs on debug builds).
    rate_scale: f64,
    /// Every request to this one path, expecting a 302 (the side-by-side runs); implies the
    /// raw driver.
    path: Option<String>,
    /// Overrides the scenario's load: this many requests a second, open loop.
    rate: Option<u64>,
    /// Overrides the scenario's connections (and a closed loop's concurrency).
    connections: Option<usize>,
    /// The link `stats` requests read.
    stats_url_id: i64,
    /// The status a redirect must get instead of 302 (baselines that answer 307 or 308).
    expect: Option<u16>,
    /// Picks codes uniformly, whatever the scenario's key distribution says.
    uniform: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut scenario, mut target, mut urls_csv, mut duration, mut out) =
        (None, None, None, None, None);
    let mut meta = false;
    let (mut idle, mut rate_scale) = (None, 1.0);
    let (mut path, mut rate, mut connections) = (None, None, None);
    let mut stats_url_id = 1;
    let (mut expect, mut uniform) = (None, false);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--scenario" => scenario = Some(PathBuf::from(val()?)),
            "--target" => target = Some(val()?),
            "--urls-csv" => urls_csv = Some(PathBuf::from(val()?)),
            "--duration" => {
                duration = Some(val()?.parse().map_err(|_| "--duration takes seconds")?)
            }
            "--out" => out = Some(PathBuf::from(val()?)),
            "--meta" => meta = true,
            "--idle" => idle = Some(val()?.parse().map_err(|_| "--idle takes a count")?),
            "--rate-scale" => {
                rate_scale = val()?.parse().map_err(|_| "--rate-scale takes a number")?
            }
            "--path" => path = Some(val()?),
            "--expect" => expect = Some(val()?.parse().map_err(|_| "--expect takes a status")?),
            "--uniform" => uniform = true,
            "--stats-url-id" => {
                stats_url_id = val()?
                    .parse()
                    .map_err(|_| "--stats-url-id takes a link id")?
            }
            "--rate" => rate = Some(val()?.parse().map_err(|_| "--rate takes requests/s")?),
            "--connections" => {
                connections = Some(val()?.parse().map_err(|_| "--connections takes a count")?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        meta,
        scenario: scenario.ok_or("--scenario is required")?,
        target: target.unwrap_or_default(),
        urls_csv: urls_csv.unwrap_or_default(),
        duration,
        out,
        idle,
        rate_scale,
        path,
        rate,
        connections,
        stats_url_id,
        expect,
        uniform,
    })
}

fn client(connections: usize, source: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30));
    if let Some(ip) = source {
        b = b.local_address(ip);
    }
    b.build().expect("http client")
}

/// Opens `n` keep-alive connections, makes one request on each, and keeps them open. They come
/// from 127.0.2.1, 127.0.2.2, … (10,000 each): one source address has only ~28k ephemeral
/// ports, and earlier runs' TIME_WAIT sockets hold some of them.
async fn hold_idle(target: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let Some(addr) = socket_addr(target) else {
        eprintln!("kurz-bench: idle connections need an ip:port target, not {target}");
        return Vec::new();
    };
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let source = std::net::SocketAddr::from(([127, 0, 2, (i / 10_000 + 1) as u8], 0));
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            socket.connect(addr).await
        };
        let mut s = match connected.await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kurz-bench: idle connection {i}: {e}");
                break;
            }
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        held.push(s);
    }
    held
}

fn socket_addr(target: &str) -> Option<std::net::SocketAddr> {
    target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// CPU seconds (user + system) this process has used: the driver's own cost, reported so a
/// run shows whether the driver or the server ran out of CPU. `None` off Linux.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// The scenario on the raw driver: warm-up, run, report (same JSON as the HTTP driver).
async fn run_raw(args: &Args, scenario: &Scenario, requests: Arc<raw::Requests>) {
    let Some(addr) = socket_addr(&args.target) else {
        eprintln!(
            "kurz-bench: the raw driver needs an ip:port target, not {}",
            args.target
        );
        std::process::exit(2);
    };
    let connections = match scenario.load {
        Load::Closed { concurrency } => concurrency,
        Load::Open { .. } => scenario.connections,
    };
    let duration = Duration::from_secs(args.duration.unwrap_or(scenario.duration_s));
    if scenario.warmup_s > 0 && args.duration.is_none() {
        let warmup = Duration::from_secs(scenario.warmup_s);
        raw::run(
            addr,
            requests.clone(),
            &scenario.load,
            warmup,
            connections,
            1,
        )
        .await;
    }
    let started = std::time::Instant::now();
    let stats = raw::run(addr, requests, &scenario.load, duration, connections, 7).await;
    let seconds = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "scenario": scenario.name,
        "target": args.target,
        "driver": "raw",
        "path": args.path,
        "load": format!("{:?}", scenario.load),
        "connections": connections,
        "seconds": (seconds * 10.0).round() / 10.0,
        "idle_connections_held": 0,
        "driver_cpu_seconds": own_cpu_seconds(),
        "result": stats.to_json(seconds),
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("write --out");
    }
    println!("{text}");
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kurz-bench: {e}");
            std::process::exit(2);
        }
    };
    let mut scenario = Scenario::load(&args.scenario).unwrap_or_else(|e| {
        eprintln!("kurz-bench: {e}");
        std::process::exit(2);
    });
    if let Some(rate) = args.rate {
        scenario.load = Load::Open { rate };
    }
    if let Some(n) = args.connections {
        scenario.connections = n;
        if let Load::Closed { concurrency } = &mut scenario.load {
            *concurrency = n;
        }
    }
    if args.path.is_some() {
        scenario.driver = Driver::Raw;
    }
    scenario.scale_rates(args.rate_scale);
    if let Some(idle) = args.idle {
        scenario.idle_connections = idle;
    }
    if args.meta {
        let meta = serde_json::json!({
            "name": scenario.name, "description": scenario.description, "target": scenario.target,
            "baselines": scenario.baselines, "links": scenario.dataset.links, "users": scenario.dataset.users, "heavy_link_clicks": scenario.dataset.heavy_link_clicks,
            "duration_s": scenario.duration_s, "warmup_s": scenario.warmup_s, "connections": scenario.connections,
        });
        println!("{meta}");
        return;
    }
    if let Some(path) = &args.path {
        let status = args.expect.unwrap_or(302);
        run_raw(&args, &scenario, Arc::new(raw::Requests::one(path, status))).await;
        return;
    }
    if args.target.is_empty() || args.urls_csv.as_os_str().is_empty() {
        eprintln!("kurz-bench: --target and --urls-csv are required");
        std::process::exit(2);
    }
    if args.uniform {
        scenario.keys = Keys::Uniform;
    }
    let zipf = match scenario.keys {
        Keys::Zipf { exponent } => Some(exponent),
        Keys::Uniform => None,
    };
    let mut codes = Codes::from_csv(&args.urls_csv, zipf).unwrap_or_else(|e| {
        eprintln!("kurz-bench: {e}");
        std::process::exit(2);
    });
    if let Some(status) = args.expect {
        for (_, expected) in &mut codes.codes {
            if *expected == 302 {
                *expected = status;
            }
        }
    }
    let codes = Arc::new(codes);
    if scenario.driver == Driver::Raw {
        let requests = Arc::new(raw::Requests::from_codes(codes.clone()));
        run_raw(&args, &scenario, requests).await;
        return;
    }
    let target = |sources: Vec<Option<IpAddr>>| {
        let per_client = scenario.connections.div_ceil(sources.len()).max(1);
        Arc::new(Target {
            base: args.target.trim_end_matches('/').to_owned(),
            clients: sources.into_iter().map(|s| client(per_client, s)).collect(),
            users: scenario.dataset.users,
            links: scenario.dataset.links.min(codes.codes.len()),
            codes: codes.clone(),
            stats_url_id: args.stats_url_id,
        })
    };
    let normal = target(if scenario.source_ips <= 1 {
        vec![None]
    } else {
        (1..=scenario.source_ips)
            .map(|i| Some(IpAddr::from([127, 0, 1, i as u8])))
            .collect()
    });
    let duration = Duration::from_secs(args.duration.unwrap_or(scenario.duration_s));
    let held = hold_idle(&args.target, scenario.idle_connections).await;
    if scenario.warmup_s > 0 && args.duration.is_none() {
        load::run(
            normal.clone(),
            &scenario.load,
            &scenario.mix,
            Duration::from_secs(scenario.warmup_s),
            1,
            scenario.connections,
        )
        .await;
    }
    let abuse = scenario.abuser.as_ref().map(|a| {
        let ip: IpAddr = a.source_ip.parse().expect("abuser source_ip");
        let t = target(vec![Some(ip)]);
        let (load, mix, conns) = (
            scenario::Load::Open { rate: a.rate },
            a.mix.clone(),
            scenario.connections,
        );
        tokio::spawn(async move { load::run(t, &load, &mix, duration, 99, conns).await })
    });
    let started = std::time::Instant::now();
    let stats = load::run(
        normal,
        &scenario.load,
        &scenario.mix,
        duration,
        7,
        scenario.connections,
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut report = serde_json::json!({
        "scenario": scenario.name,
        "target": args.target,
        "load": format!("{:?}", scenario.load),
        "connections": scenario.connections,
        "seconds": (seconds * 10.0).round() / 10.0,
        "idle_connections_held": held.len(),
        "result": stats.to_json(seconds),
    });
    if let Some(handle) = abuse {
        if let Ok(a) = handle.await {
            report["abuser"] = a.to_json(seconds);
        }
    }
    drop(held);
    let text = serde_json::to_string_pretty(&report).expect("json");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("write --out");
    }
    println!("{text}");
}
