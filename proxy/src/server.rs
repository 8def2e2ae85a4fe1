//! Assembling the Pingora server: the proxy service with its listeners, the upstream health
//! checks, the admin listener, the invalidation listener, the key schema check and the SIGHUP
//! reloader.

use crate::admin::Admin;
use crate::click_log::{Batching, ClickLog};
use crate::config::ProxyConfig;
use crate::conn::{ConnLimits, Guarded, TlsListeners};
use crate::invalidations::InvalidationListener;
use crate::key_check::{KeyGate, KeySchemaCheck};
use crate::metrics::METRICS;
use crate::near_cache::NearCache;
use crate::rate_limit::RateLimiter;
use crate::redirect::Redirector;
use crate::reload::Reloader;
use crate::service::{Edge, EdgeSettings};
use crate::tls_cert::ServedCert;
use crate::upstreams;
use kurz_common::keys::KeySchema;
use kurz_common::redis_handle::RedisHandle;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// TLS settings for the HTTPS listeners: certificates come from `cert`, which SIGHUP can swap.
pub fn tls_settings(cfg: &ProxyConfig, cert: Arc<ServedCert>) -> Result<TlsSettings, String> {
    // No paths: the resolver serves the certificate, Pingora never reads the files itself.
    let mut tls = TlsSettings::intermediate("", "")
        .map_err(|e| format!("config keys `listen.tls_cert`/`listen.tls_key`: {e}"))?;
    tls.set_cert_resolver(cert);
    if cfg.listen.http2 {
        tls.enable_h2();
    }
    Ok(tls)
}

fn server_conf(cfg: &ProxyConfig) -> ServerConf {
    let s = &cfg.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        // Pingora's "grace period" starts once the listeners are closed; ours (the drain, see
        // `drain`) comes before. Its wait is then the time in-flight requests get to finish.
        grace_period_seconds: Some(s.graceful_shutdown_timeout_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// Pingora binds a service's listeners in a task of its own and, when a bind fails, loses only
/// that service: the process stays up and the admin port answers ready while the public port
/// refuses every connection. Binding each address once first makes an address this host does
/// not have, a port another process holds or a privileged port a start-up error naming its key.
/// (An upgrade takes its sockets from the running process, which holds them.)
fn listeners_bind(cfg: &ProxyConfig) -> Result<(), String> {
    let public = cfg.listen.http.iter().map(|a| ("listen.http", a));
    let tls = cfg.listen.https.iter().map(|a| ("listen.https", a));
    let admin = std::iter::once(("admin.listen", &cfg.admin.listen));
    for (key, addr) in public.chain(tls).chain(admin) {
        // A port still held is waited for as Pingora would (30 tries a second apart): a
        // previous edge may be finishing its drain.
        let mut tries = 0;
        loop {
            tries += 1;
            // std sets SO_REUSEADDR, as Pingora does: a port whose last connections linger in
            // TIME_WAIT after a restart still passes.
            match std::net::TcpListener::bind(addr.as_str()) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < BIND_TRIES => {
                    log::warn!(key = key, addr = addr.as_str(), attempt = tries; "address in use; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(format!("config key `{key}`: cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

/// Tries of a bind whose port is in use, as Pingora's own listener makes.
const BIND_TRIES: u32 = 30;

/// Builds and runs the server; returns only on a start-up error.
/// `file`: the config file alone, as read with `cfg` (a reload compares edits with it); `cert`:
/// the certificate and key `cfg` names, when it serves HTTPS. Both read before: under
/// `--upgrade` nothing here may fail on a file after the sockets are taken over (a rotation
/// rewriting the pair while the new process waits would leave nothing listening).
pub fn run(
    cfg: ProxyConfig,
    file: ProxyConfig,
    cert: Option<crate::tls_cert::Loaded>,
    path: &Path,
    upgrade: bool,
) -> Result<(), String> {
    let opt = Opt {
        upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    match kurz_common::open_files::raise_to_hard() {
        Ok((before, now)) => {
            METRICS
                .open_files_limit
                .set(i64::try_from(now).unwrap_or(i64::MAX));
            if before != now {
                log::info!(before = before, now = now; "open-file limit raised to the hard limit");
            }
        }
        Err(e) => {
            // The limit it runs with is still what the alert compares with.
            if let Some(soft) = kurz_common::open_files::soft_limit() {
                METRICS
                    .open_files_limit
                    .set(i64::try_from(soft).unwrap_or(i64::MAX));
            }
            log::warn!(error = e.to_string(); "cannot raise the open-file limit")
        }
    }
    if !upgrade {
        listeners_bind(&cfg)?;
    }
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&cfg));
    server.bootstrap();

    let (lb, list) = upstreams::build(&cfg.upstreams)
        .map_err(|e| format!("config key `upstreams.servers`: {e}"))?;
    let lb_service = background_service("upstream health", lb);
    let lb = lb_service.task();

    let near = Arc::new(NearCache::new(
        cfg.cache.near_capacity,
        Duration::from_millis(cfg.cache.near_ttl_ms),
    ));
    let redis_errors = prometheus::register_int_counter!(
        "kurz_proxy_redis_errors_total",
        "Failed Redis commands and connects"
    )
    .map_err(|e| e.to_string())?;
    // Each user of Redis below has a connection of its own.
    let connect = || {
        RedisHandle::from_settings(&cfg.redis, redis_errors.clone())
            .map_err(|e| format!("config key `redis.url`/`redis.cluster_nodes`: {e}"))
    };
    let redis = Arc::new(connect()?);
    // One for each request thread's click appends (`click_log`): a thread's batches then go
    // out and come back on that thread.
    let lanes = (0..cfg.server.threads)
        .map(|_| connect().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = KeySchema::new(&cfg.redis.prefix, cfg.redis.partitions);
    let gate = Arc::new(KeyGate::default());
    let key_check = KeySchemaCheck {
        redis: connect()?,
        keys: keys.clone(),
        gate: gate.clone(),
    };
    let visitors = Arc::new(kurz_common::visitors::VisitorSalt::default());
    let salt_refresh = crate::visitor_salt::SaltRefresh {
        redis: connect()?,
        keys: keys.clone(),
        salt: visitors.clone(),
    };
    let limiter = Arc::new(RateLimiter::new(&cfg.rate_limits));
    let probation = upstreams::Probation::new(lb.clone(), list, &cfg.upstreams.health_check)
        .map_err(|e| format!("config key `upstreams.health_check`: {e}"))?;
    let trust: crate::service::SharedTrust =
        Arc::new(std::sync::RwLock::new(Arc::new(cfg.proxy_trust()?)));
    let edge = Edge {
        lb: lb.clone(),
        probation: probation.clone(),
        trust: trust.clone(),
        limiter: limiter.clone(),
        redirector: Redirector::new(
            redis.clone(),
            keys.clone(),
            near.clone(),
            gate.clone(),
            ClickLog::new(
                lanes,
                Batching {
                    window: Duration::from_micros(cfg.clicks.batch_window_us),
                    max: cfg.clicks.batch_max,
                },
                METRICS.click_batch_size.clone(),
            ),
        ),
        settings: EdgeSettings::from_config(&cfg),
        visitors,
    };
    let mut http = pingora::proxy::HttpProxy::new(edge, server.configuration.clone());
    http.handle_init_modules();
    let cert = cert.map(|loaded| {
        let served = Arc::new(ServedCert::new(loaded));
        match served.expiry() {
            Some(t) => METRICS.tls_cert_expiry.set(t),
            None => log::warn!("cannot read the certificate's expiry; the expiry alert is blind"),
        }
        served
    });
    let tls = match &cert {
        Some(served) => Some(TlsListeners::new(
            tls_settings(&cfg, served.clone())?,
            &cfg.listen.https,
        )?),
        None => None,
    };
    let limits = &cfg.limits;
    let guarded = Guarded {
        inner: Arc::new(http),
        limits: Arc::new(
            ConnLimits::new(
                Duration::from_millis(limits.header_timeout_ms),
                Duration::from_millis(limits.body_total_timeout_ms),
                limits.max_connections_per_client,
                limiter.clone(),
                trust.clone(),
            )
            .with_send_timeout(Duration::from_millis(limits.client_send_timeout_ms)),
        ),
        tls,
    };
    let mut proxy = Service::new("kurz edge".to_owned(), guarded);
    let buffers = L4BufferSettings::default().read(cfg.listen.read_buffer_bytes);
    for addr in &cfg.listen.http {
        proxy.add_listener(ListenerConfig::tcp(addr).l4_buffer(buffers));
    }
    // Plain TCP to Pingora: the connection layer shakes hands (`conn::tls`).
    for addr in &cfg.listen.https {
        proxy.add_listener(ListenerConfig::tcp(addr).l4_buffer(buffers));
    }
    let _ = &*METRICS;

    let mut admin = Service::new(
        "admin".to_owned(),
        Admin {
            lb: lb.clone(),
            key_gate: gate,
        },
    );
    admin.add_tcp(&cfg.admin.listen);

    let listener = InvalidationListener {
        redis_urls: if cfg.redis.cluster_nodes.is_empty() {
            vec![cfg.redis.url.clone()]
        } else {
            cfg.redis.cluster_nodes.clone()
        },
        attempts: Default::default(),
        channel: keys.invalidations(),
        near,
    };
    let reloader = Reloader {
        path: path.to_owned(),
        cert,
        probation,
        lb,
        limiter,
        trust,
        started: cfg.clone(),
        started_file: file,
    };

    server.add_service(proxy);
    server.add_service(lb_service);
    server.add_service(admin);
    server.add_service(background_service("invalidations", listener));
    server.add_service(background_service("key schema check", key_check));
    server.add_service(background_service("visitor salt", salt_refresh));
    server.add_service(background_service("reload", reloader));
    log::info!(
        http = cfg.listen.http.join(","), https = cfg.listen.https.join(","), admin = cfg.admin.listen.as_str(),
        upstreams = cfg.upstreams.servers.join(",");
        "kurz-proxy starting"
    );
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::drain::DrainingSignals {
            grace: Duration::from_secs(cfg.server.grace_period_seconds),
        }),
    });
    // Pingora's shutdown ends here; `exit` skips destructors, so the queued log lines go first.
    kurz_common::logging::flush();
    std::process::exit(0)
}
