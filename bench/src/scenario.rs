//! Scenario files (`bench/scenarios/*.yaml`): what to send, how fast, for how long.

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Which listener `bench/run` points the driver at: `edge`, `api`, `nginx`, `pingora`.
    #[serde(default = "default_target")]
    pub target: String,
    pub duration_s: u64,
    #[serde(default)]
    pub warmup_s: u64,
    pub load: Load,
    #[serde(default = "default_connections")]
    pub connections: usize,
    pub dataset: Dataset,
    #[serde(default)]
    pub keys: Keys,
    pub mix: Vec<Weighted>,
    /// A second client group, from another loopback address, flooding at its own rate (the
    /// `abuse` scenario). The result is the normal clients' latency and errors.
    #[serde(default)]
    pub abuser: Option<Abuser>,
    /// Idle keep-alive connections held open during the run (the `connections` scenario).
    #[serde(default)]
    pub idle_connections: usize,
    /// Loopback addresses the normal clients spread over (127.0.1.1, 127.0.1.2, …), so that
    /// per-IP rate limits see many ordinary clients rather than one huge one. 1: the default
    /// source address.
    #[serde(default = "default_source_ips")]
    pub source_ips: usize,
    /// Which `bench/run` baselines to run beside it (redirect scenarios).
    #[serde(default)]
    pub baselines: Vec<String>,
    /// `http`: a full HTTP client, any mix. `raw`: the cheap redirect driver (`raw.rs`), for
    /// mixes of redirects only from one source address.
    #[serde(default)]
    pub driver: Driver,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Http,
    Raw,
}

fn default_target() -> String {
    "edge".into()
}

fn default_connections() -> usize {
    64
}

/// Closed loop: `concurrency` requests in flight, each sent when the previous answered.
/// Open loop: `rate` requests a second on a fixed schedule, latency measured from the intended
/// send time so stalls are not hidden (no coordinated omission).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "lowercase")]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: u64 },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Links in the data set (imported through the bulk endpoint by `bench/run`).
    pub links: usize,
    #[serde(default = "default_users")]
    pub users: usize,
    /// Click events `bench/run` stores on the data set's first link before the run (the
    /// `stats` scenario reads that link's stats).
    #[serde(default)]
    pub heavy_link_clicks: usize,
}

fn default_source_ips() -> usize {
    1
}

fn default_users() -> usize {
    1000
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, tag = "distribution", rename_all = "lowercase")]
pub enum Keys {
    #[default]
    Uniform,
    Zipf {
        exponent: f64,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Redirect,
    Create,
    List,
    Get,
    Health,
    /// `GET /urls/<heavy link>/stats`.
    Stats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    pub kind: Kind,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abuser {
    pub rate: u64,
    pub mix: Vec<Weighted>,
    /// Loopback address the abuser sends from, so the edge sees a different client.
    #[serde(default = "default_abuser_ip")]
    pub source_ip: String,
}

fn default_abuser_ip() -> String {
    "127.0.0.2".into()
}

impl Scenario {
    /// Multiplies open-loop rates (smoke runs on debug builds send less).
    pub fn scale_rates(&mut self, factor: f64) {
        let scale = |r: u64| ((r as f64 * factor).round() as u64).max(1);
        if let Load::Open { rate } = &mut self.load {
            *rate = scale(*rate);
        }
        if let Some(a) = &mut self.abuser {
            a.rate = scale(a.rate);
        }
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s: Scenario =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.mix.is_empty() || s.mix.iter().all(|w| w.weight == 0) {
            return Err(format!("{}: mix needs a positive weight", path.display()));
        }
        if !(1..=250).contains(&s.source_ips) {
            return Err(format!("{}: source_ips must be 1 to 250", path.display()));
        }
        if s.driver == Driver::Raw
            && (s
                .mix
                .iter()
                .any(|w| w.kind != Kind::Redirect && w.weight > 0)
                || s.abuser.is_some()
                || s.source_ips != 1)
        {
            return Err(format!(
                "{}: driver raw sends redirects only, from one source address, without an abuser",
                path.display()
            ));
        }
        if s.duration_s == 0 {
            return Err(format!("{}: duration_s must be above 0", path.display()));
        }
        Ok(s)
    }
}
