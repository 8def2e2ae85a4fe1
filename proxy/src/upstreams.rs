//! The API pool: round robin over health-checked upstreams whose list can change at run time
//! (SIGHUP) without dropping a connection.
//!
//! Pingora starts every backend healthy. That is wrong twice over: an upstream added by a reload
//! where nothing listens would take its share of requests until `fall` checks failed, and an
//! upstream that refuses a connection keeps its share until the next checks notice. Both are
//! therefore *held*: disabled in the balancer until one health check passes (see [`Probation`]).

use crate::config::{HealthCheckSection, UpstreamsSection};
use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Service discovery backed by a list the reloader can replace, and the set of upstreams held
/// out of rotation until a health check passes.
#[derive(Clone, Default)]
pub struct UpstreamList {
    servers: Arc<RwLock<BTreeSet<Backend>>>,
    held: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl UpstreamList {
    /// Replaces the list; takes effect at the load balancer's next `update()`. Returns the
    /// addresses that were not in the list before.
    pub fn set(&self, servers: &[String]) -> Result<Vec<SocketAddr>> {
        let mut set = BTreeSet::new();
        for s in servers {
            set.insert(Backend::new(s)?);
        }
        let mut current = self.servers.write().expect("upstream list lock");
        let added = set
            .iter()
            .filter(|b| !current.contains(*b))
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
        *current = set;
        Ok(added)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers
            .read()
            .expect("upstream list lock")
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }

    fn backend(&self, addr: SocketAddr) -> Option<Backend> {
        self.servers
            .read()
            .expect("upstream list lock")
            .iter()
            .find(|b| b.addr.as_inet() == Some(&addr))
            .cloned()
    }

    /// Marks `addr` held; true when it was not held already.
    fn hold(&self, addr: SocketAddr) -> bool {
        self.held.lock().expect("held lock").insert(addr)
    }

    fn release(&self, addr: SocketAddr) {
        self.held.lock().expect("held lock").remove(&addr);
    }

    pub fn is_held(&self, addr: &SocketAddr) -> bool {
        self.held.lock().expect("held lock").contains(addr)
    }
}

#[async_trait]
impl ServiceDiscovery for UpstreamList {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let servers = self.servers.read().expect("upstream list lock").clone();
        let held = self.held.lock().expect("held lock");
        // A held backend stays disabled across membership changes; the others keep whatever
        // the balancer has for them.
        let enablement = servers
            .iter()
            .filter(|b| b.addr.as_inet().is_some_and(|a| held.contains(a)))
            .map(|b| (enablement_key(b), false))
            .collect();
        Ok((servers, enablement))
    }
}

/// The key Pingora's `discover` enablement map is indexed by: its (crate-private)
/// `Backend::hash_key`, a `DefaultHasher` over the backend, which is deterministic.
fn enablement_key(b: &Backend) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut hasher);
    hasher.finish()
}

fn health_check(cfg: &HealthCheckSection) -> Result<HttpHealthCheck> {
    let mut hc = HttpHealthCheck::new("kurz-api", false);
    hc.req.set_uri(
        cfg.path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "bad health check path"))?,
    );
    hc.consecutive_success = cfg.rise;
    hc.consecutive_failure = cfg.fall;
    hc.peer_template.options.connection_timeout = Some(Duration::from_millis(cfg.timeout_ms));
    hc.peer_template.options.read_timeout = Some(Duration::from_millis(cfg.timeout_ms));
    Ok(hc)
}

/// The load balancer (to run as a background service) and the list that feeds it.
pub fn build(cfg: &UpstreamsSection) -> Result<(LoadBalancer<RoundRobin>, UpstreamList)> {
    let list = UpstreamList::default();
    list.set(&cfg.servers)?;
    let backends = Backends::new(Box::new(list.clone()));
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends);
    let mut hc = health_check(&cfg.health_check)?;
    hc.reuse_connection = true;
    lb.set_health_check(Box::new(hc));
    lb.health_check_frequency = Some(Duration::from_millis(cfg.health_check.interval_ms));
    lb.parallel_health_check = true;
    // The balancer learns its backends at its service's first run, which can come after the
    // listeners accept: right after a graceful upgrade hands them over, requests would find no
    // upstream. Fill it now.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::because(ErrorType::InternalError, "runtime for the upstream list", e))?
        .block_on(lb.update())?;
    Ok((lb, list))
}

/// Takes upstreams out of rotation and brings them back once a health check of their own passes.
#[derive(Clone)]
pub struct Probation {
    lb: Arc<LoadBalancer<RoundRobin>>,
    list: UpstreamList,
    check: Arc<HttpHealthCheck>,
    interval: Duration,
}

impl Probation {
    pub fn new(
        lb: Arc<LoadBalancer<RoundRobin>>,
        list: UpstreamList,
        cfg: &HealthCheckSection,
    ) -> Result<Self> {
        Ok(Self {
            lb,
            list,
            check: Arc::new(health_check(cfg)?),
            interval: Duration::from_millis(cfg.interval_ms),
        })
    }

    pub fn list(&self) -> &UpstreamList {
        &self.list
    }

    /// Marks `addr` held before the balancer learns of it (a reload adding it), so no request
    /// reaches it before [`Probation::watch`] has seen it pass a check.
    pub fn hold_new(&self, addr: SocketAddr) {
        self.list.hold(addr);
    }

    /// Holds `addr` out of rotation now (it refused a connection) and probes it back.
    pub fn hold_now(&self, addr: SocketAddr) {
        if !self.list.hold(addr) {
            return;
        }
        let Some(backend) = self.list.backend(addr) else {
            self.list.release(addr);
            return;
        };
        self.lb.backends().set_enable(&backend, false);
        log::warn!(upstream = addr.to_string(); "upstream refused a connection; held until a health check passes");
        self.watch(addr);
    }

    /// Probes a held upstream every interval until a check passes (then enables it) or it
    /// leaves the list.
    pub fn watch(&self, addr: SocketAddr) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(backend) = this.list.backend(addr) else {
                    this.list.release(addr);
                    return;
                };
                if this.check.check(&backend).await.is_ok() {
                    this.list.release(addr);
                    this.lb.backends().set_enable(&backend, true);
                    log::info!(upstream = addr.to_string(); "held upstream passed a health check; back in rotation");
                    return;
                }
                tokio::time::sleep(this.interval).await;
            }
        });
    }
}

/// Refreshes the health gauge from the load balancer's view.
pub fn export_health(lb: &LoadBalancer<RoundRobin>) {
    let gauge = &METRICS.upstream_healthy;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_upstream_joins_the_balancer_disabled() {
        let list = UpstreamList::default();
        let added = list
            .set(&["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()])
            .unwrap();
        assert_eq!(added.len(), 2);
        list.hold("127.0.0.1:2".parse().unwrap());
        let lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(list.clone())));
        lb.update().await.unwrap();
        let ready: Vec<(String, bool)> = lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), lb.backends().ready(b)))
            .collect();
        assert_eq!(
            ready,
            [
                ("127.0.0.1:1".to_owned(), true),
                ("127.0.0.1:2".to_owned(), false)
            ]
        );
        // A reload that keeps both reports only the one that is new.
        let added = list
            .set(&[
                "127.0.0.1:1".to_owned(),
                "127.0.0.1:2".to_owned(),
                "127.0.0.1:3".to_owned(),
            ])
            .unwrap();
        assert_eq!(added, ["127.0.0.1:3".parse::<SocketAddr>().unwrap()]);
    }
}
