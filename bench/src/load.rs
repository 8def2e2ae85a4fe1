//! The load engines: closed loop (fixed concurrency) and open loop (fixed schedule, latency from
//! the intended send time), each request's status checked against what the contract says.

use crate::keys::Codes;
use crate::scenario::{Kind, Load, Weighted};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where and how to send.
pub struct Target {
    pub base: String,
    /// One client per source address; each request picks one.
    pub clients: Vec<reqwest::Client>,
    pub users: usize,
    pub links: usize,
    pub codes: Arc<Codes>,
    /// The link whose stats `Kind::Stats` reads (`--stats-url-id`).
    pub stats_url_id: i64,
}

/// Results of one client group.
pub struct Stats {
    pub latency_us: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    pub by_kind: BTreeMap<String, (u64, u64)>,
    pub statuses: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            requests: 0,
            errors: 0,
            by_kind: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }

    fn record(&mut self, kind: Kind, ok: bool, status: String, elapsed: Duration) {
        self.requests += 1;
        let entry = self
            .by_kind
            .entry(format!("{kind:?}").to_lowercase())
            .or_default();
        entry.0 += 1;
        if !ok {
            self.errors += 1;
            entry.1 += 1;
        }
        *self.statuses.entry(status).or_default() += 1;
        // Clamped, not dropped: a sample past the bound still counts in the tail.
        self.latency_us
            .saturating_record((elapsed.as_micros() as u64).max(1));
    }

    /// What the workers merged into `total`, once they have all finished.
    pub fn collected(total: Arc<Mutex<Stats>>) -> Stats {
        Arc::try_unwrap(total)
            .ok()
            .map(|m| m.into_inner().expect("stats lock"))
            .unwrap_or_else(Stats::new)
    }

    pub fn merge(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        let _ = self.latency_us.add(&other.latency_us);
        for (k, (n, e)) in &other.by_kind {
            let entry = self.by_kind.entry(k.clone()).or_default();
            entry.0 += n;
            entry.1 += e;
        }
        for (k, n) in &other.statuses {
            *self.statuses.entry(k.clone()).or_default() += n;
        }
    }

    pub fn to_json(&self, seconds: f64) -> serde_json::Value {
        let q = |p: f64| self.latency_us.value_at_quantile(p) as f64 / 1000.0;
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 },
            // Answers as expected only: quick errors (a 429, a 503) must not raise the rate.
            "throughput_rps": ((self.requests - self.errors) as f64 / seconds).round(),
            "sent_rps": (self.requests as f64 / seconds).round(),
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": self.latency_us.max() as f64 / 1000.0},
            "by_kind": self.by_kind.iter().map(|(k, (n, e))| (k.clone(), serde_json::json!({"requests": n, "errors": e}))).collect::<serde_json::Map<_, _>>(),
            "statuses": self.statuses,
        })
    }
}

/// Picks request kinds by weight.
struct Mix(Vec<(Kind, u32)>, u32);

impl Mix {
    fn new(mix: &[Weighted]) -> Self {
        let total = mix.iter().map(|w| w.weight).sum();
        Mix(mix.iter().map(|w| (w.kind, w.weight)).collect(), total)
    }

    fn pick(&self, rng: &mut impl Rng) -> Kind {
        let mut x = rng.random_range(0..self.1);
        for (kind, w) in &self.0 {
            if x < *w {
                return *kind;
            }
            x -= w;
        }
        self.0[0].0
    }
}

/// Sends one request of `kind`; whether the answer is the one the contract promises.
async fn one(t: &Target, kind: Kind, rng: &mut StdRng) -> (bool, String) {
    let client = &t.clients[rng.random_range(0..t.clients.len())];
    let (req, expected): (reqwest::RequestBuilder, &[u16]) = match kind {
        Kind::Redirect => {
            let (code, status) = t.codes.pick(rng);
            (
                client.get(format!("{}/{code}", t.base)),
                if *status == 302 { &[302] } else { &[404] },
            )
        }
        Kind::Create => {
            let body = serde_json::json!({"user_id": rng.random_range(1..=t.users), "original_url": format!("https://example.com/bench/{}", rng.random::<u32>())});
            (client.post(format!("{}/urls", t.base)).json(&body), &[201])
        }
        // A user paging through their own links: what the dashboard of a signed-in user does
        // (and all a non-admin may list when auth is required).
        Kind::List => (
            client.get(format!(
                "{}/urls?user_id={}&per_page=20&page={}",
                t.base,
                rng.random_range(1..=t.users),
                rng.random_range(1..=3)
            )),
            &[200],
        ),
        Kind::Get => (
            client.get(format!("{}/urls/{}", t.base, rng.random_range(1..=t.links))),
            &[200],
        ),
        Kind::Health => (client.get(format!("{}/health", t.base)), &[200]),
        Kind::Stats => (
            client.get(format!("{}/urls/{}/stats", t.base, t.stats_url_id)),
            &[200],
        ),
    };
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let _ = res.bytes().await;
            (expected.contains(&status), status.to_string())
        }
        Err(e) => (
            false,
            if e.is_timeout() {
                "timeout".into()
            } else {
                "transport".into()
            },
        ),
    }
}

/// Runs `load` of `mix` against `t` for `duration`.
pub async fn run(
    t: Arc<Target>,
    load: &Load,
    mix: &[Weighted],
    duration: Duration,
    seed: u64,
    connections: usize,
) -> Stats {
    let mix = Arc::new(Mix::new(mix));
    let total = Arc::new(Mutex::new(Stats::new()));
    let deadline = Instant::now() + duration;
    match *load {
        Load::Closed { concurrency } => {
            let mut workers = Vec::new();
            for w in 0..concurrency {
                let (t, mix, total) = (t.clone(), mix.clone(), total.clone());
                workers.push(tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed + w as u64);
                    let mut stats = Stats::new();
                    while Instant::now() < deadline {
                        let kind = mix.pick(&mut rng);
                        let started = Instant::now();
                        let (ok, status) = one(&t, kind, &mut rng).await;
                        stats.record(kind, ok, status, started.elapsed());
                    }
                    total.lock().expect("stats lock").merge(&stats);
                }));
            }
            for w in workers {
                let _ = w.await;
            }
        }
        Load::Open { rate } => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            // At most `connections` requests on the wire; the rest wait their turn, and that
            // wait counts in their latency (measured from the intended send time). A request
            // still waiting 5 s after the run ends was never sent: an error ("overload").
            let wire = Arc::new(tokio::sync::Semaphore::new(connections.max(1)));
            let give_up = tokio::time::Instant::from_std(deadline) + Duration::from_secs(5);
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            let mut rng = StdRng::seed_from_u64(seed);
            for i in 0u64.. {
                let intended = start + interval.mul_f64(i as f64);
                if intended.into_std() >= deadline {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                let (t, kind, total, wire) =
                    (t.clone(), mix.pick(&mut rng), total.clone(), wire.clone());
                let mut task_rng = StdRng::seed_from_u64(rng.random());
                tasks.push(tokio::spawn(async move {
                    let Ok(Ok(_permit)) =
                        tokio::time::timeout_at(give_up, wire.acquire_owned()).await
                    else {
                        let elapsed = tokio::time::Instant::now() - intended;
                        total.lock().expect("stats lock").record(
                            kind,
                            false,
                            "overload".into(),
                            elapsed,
                        );
                        return;
                    };
                    let (ok, status) = one(&t, kind, &mut task_rng).await;
                    // From the intended send time: a stalled server shows up as latency, not as
                    // requests that were never sent.
                    let elapsed = tokio::time::Instant::now() - intended;
                    total
                        .lock()
                        .expect("stats lock")
                        .record(kind, ok, status, elapsed);
                }));
                if tasks.len() >= 4096 {
                    tasks.retain(|h| !h.is_finished());
                }
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    Stats::collected(total)
}
