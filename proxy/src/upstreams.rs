//! The API pool: round robin over health-checked upstreams whose list can change at run time
//! (SIGHUP) without dropping a connection.

use crate::config::UpstreamsSection;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Service discovery backed by a list the reloader can replace.
#[derive(Clone, Default)]
pub struct UpstreamList(Arc<RwLock<BTreeSet<Backend>>>);

impl UpstreamList {
    /// Replaces the list; takes effect at the load balancer's next `update()`.
    pub fn set(&self, servers: &[String]) -> Result<()> {
        let mut set = BTreeSet::new();
        for s in servers {
            set.insert(Backend::new(s)?);
        }
        *self.0.write().expect("upstream list lock") = set;
        Ok(())
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.0
            .read()
            .expect("upstream list lock")
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }
}

#[async_trait]
impl ServiceDiscovery for UpstreamList {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((
            self.0.read().expect("upstream list lock").clone(),
            HashMap::new(),
        ))
    }
}

/// The load balancer (to run as a background service) and the list that feeds it.
pub fn build(cfg: &UpstreamsSection) -> Result<(LoadBalancer<RoundRobin>, UpstreamList)> {
    let list = UpstreamList::default();
    list.set(&cfg.servers)?;
    let backends = Backends::new(Box::new(list.clone()));
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends);
    let hc_cfg = &cfg.health_check;
    let mut hc = HttpHealthCheck::new("kurz-api", false);
    hc.req.set_uri(
        hc_cfg
            .path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "bad health check path"))?,
    );
    hc.consecutive_success = hc_cfg.rise;
    hc.consecutive_failure = hc_cfg.fall;
    hc.peer_template.options.connection_timeout = Some(Duration::from_millis(hc_cfg.timeout_ms));
    hc.peer_template.options.read_timeout = Some(Duration::from_millis(hc_cfg.timeout_ms));
    hc.reuse_connection = true;
    lb.set_health_check(Box::new(hc));
    lb.health_check_frequency = Some(Duration::from_millis(hc_cfg.interval_ms));
    lb.parallel_health_check = true;
    Ok((lb, list))
}

/// Refreshes the health gauge from the load balancer's view.
pub fn export_health(lb: &LoadBalancer<RoundRobin>) {
    let gauge = &crate::metrics::METRICS.upstream_healthy;
    gauge.reset();
    for backend in lb.backends().get_backend().iter() {
        gauge
            .with_label_values(&[&backend.addr.to_string()])
            .set(i64::from(lb.backends().ready(backend)));
    }
}

/// Whether any upstream is healthy.
pub fn any_healthy(lb: &LoadBalancer<RoundRobin>) -> bool {
    lb.backends()
        .get_backend()
        .iter()
        .any(|b| lb.backends().ready(b))
}
