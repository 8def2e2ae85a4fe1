//! Building the application from config and running it until shutdown.

use crate::cache::LinkCache;
use crate::clicks::consumer::Consumer;
use crate::clicks::ClickRecorder;
use crate::config::ApiConfig;
use crate::metrics::Metrics;
use crate::redis_handle::RedisHandle;
use crate::state::AppState;
use crate::{deadline, http_log, migrate, routes};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use kurz_common::keys::KeySchema;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A built application whose listeners are bound (so tests can read the ports) but not yet
/// serving.
pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    pub state: AppState,
}

/// How long start-up waits for PostgreSQL to answer before giving up.
const DB_WAIT: Duration = Duration::from_secs(30);

/// How often the key schema fingerprint is written again (see `republish_schema`).
const SCHEMA_EVERY: Duration = Duration::from_millis(kurz_common::keys::SCHEMA_EVERY_MS as u64);

/// A pool of `database.max_connections` connections.
pub fn build_pool(config: &ApiConfig) -> Result<Pool, String> {
    pool_of(config, config.database.max_connections, &[])
}

/// The connections of the create writers (`crate::creates`), taken out of
/// `database.max_connections`. Their batch statement takes its rows from arrays, whose length
/// a generic plan cannot know, so PostgreSQL's plan cache keeps choosing a custom plan and
/// plans the statement again for every batch: about as much backend time as the insert itself
/// for a group of four (docs/capacity.md). One plan fits every batch size a writer sends.
///
/// A writer serves every create of its process in turn: one insert waiting for a code another
/// transaction holds uncommitted (an import's) held all the others for up to the statement
/// timeout. A second's lock wait sends the batch one create at a time (`creates::commit`), and
/// the create whose code is held answers 503 on its own.
fn create_pool(config: &ApiConfig) -> Result<Pool, String> {
    pool_of(
        config,
        config.database.create_writers,
        &["plan_cache_mode=force_generic_plan", "lock_timeout=1000"],
    )
}

fn pool_of(config: &ApiConfig, size: usize, settings: &[&str]) -> Result<Pool, String> {
    let (mut pg, tls) = crate::db::tls::parse(&config.database.url)?;
    pg.connect_timeout(Duration::from_millis(config.database.connect_timeout_ms));
    pg.application_name("kurz-api");
    let mut options: Vec<String> = settings.iter().map(|s| format!("-c {s}")).collect();
    if config.database.statement_timeout_ms > 0 {
        // Server-side: a statement past it is cancelled by PostgreSQL itself, whatever the
        // client does meanwhile. Migrations lift it for their own session (`migrate.rs`).
        options.push(format!(
            "-c statement_timeout={}",
            config.database.statement_timeout_ms
        ));
    }
    if config.database.idle_in_transaction_timeout_ms > 0 {
        options.push(format!(
            "-c idle_in_transaction_session_timeout={}",
            config.database.idle_in_transaction_timeout_ms
        ));
    }
    if !options.is_empty() {
        pg.options(options.join(" "));
    }
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_millis(
            config.database.acquire_timeout_ms,
        )))
        .create_timeout(Some(Duration::from_millis(
            config.database.connect_timeout_ms,
        )))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("database pool: {e}"))
}

impl Application {
    /// Connects, migrates and binds. Redis may be down: the API starts degraded.
    pub async fn build(config: ApiConfig) -> Result<Self, String> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let requests = config
            .database
            .max_connections
            .checked_sub(config.database.create_writers)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                "config key `database.create_writers` must be below database.max_connections"
                    .to_owned()
            })?;
        let db = pool_of(&config, requests, &[])?;
        let admin_listener = TcpListener::bind(config.admin_listen).await.map_err(|e| {
            format!(
                "cannot listen on {} (config key `admin_listen`): {e}",
                config.admin_listen
            )
        })?;
        metrics_meanwhile(&admin_listener, &metrics, async {
            wait_for_db(&db).await?;
            metrics.database_up.set(1);
            let mut client = db.get().await.map_err(|e| format!("database: {e}"))?;
            migrate::run(&mut client).await
        })
        .await?;
        let redis = Arc::new(
            RedisHandle::from_settings(&config.redis, metrics.redis_errors.clone()).map_err(
                |e| format!("config key `redis.url`/`redis.cluster_nodes` is invalid: {e}"),
            )?,
        );
        let keys = KeySchema::new(&config.redis.prefix, config.redis.partitions);
        let cache = LinkCache::new(
            redis.clone(),
            keys.clone(),
            config.cache.link_ttl_seconds,
            config.cache.negative_ttl_seconds,
        );
        let clicks = ClickRecorder::new(
            redis.clone(),
            db.clone(),
            keys.clone(),
            config.clicks.sample_rate,
            metrics.clone(),
        );
        let consumer_name = format!("api-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let consumer = Arc::new(
            Consumer::new(
                redis.clone(),
                db.clone(),
                keys.clone(),
                config.clicks.group.clone(),
                consumer_name,
                config.clicks.batch_size,
                config.clicks.claim_idle_ms,
                Duration::from_millis(config.clicks.poll_interval_ms),
                metrics.clone(),
            )
            .with_linger(Duration::from_millis(config.clicks.linger_ms)),
        );
        if let Err(e) = consumer.ensure_groups().await {
            log::warn!(error = e.to_string(); "redis unavailable at start-up; running degraded until it answers");
        }
        // A lowered `redis.partitions` leaves the streams above it unread: refuse to start
        // while they hold clicks, rather than never store them (docs/scaling.md).
        match consumer.stranded_streams().await {
            Err(e) => {
                log::warn!(error = e.to_string(); "could not look for click streams above redis.partitions at start-up (docs/scaling.md)")
            }
            Ok(stranded) => {
                if let Some((key, len)) = stranded.first() {
                    return Err(format!(
                        "config key `redis.partitions` is {}, but the click stream {key} of a \
                     larger count still holds {len} entries ({} such streams): nothing would \
                     read them. Set it back to a count that covers them until they are empty \
                     (docs/scaling.md)",
                        keys.partitions(),
                        stranded.len()
                    ));
                }
            }
        }
        let _ = cache.publish_schema().await;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            format!(
                "cannot listen on {} (config key `listen`): {e}",
                config.listen
            )
        })?;
        let targets = Arc::new(config.target_policy());
        let proxies = Arc::new(config.proxy_trust()?);
        let auth = Arc::new(crate::auth::Auth::new(
            &config.auth,
            redis.clone(),
            keys.clone(),
        )?);
        let creates = crate::creates::Creates::start(
            create_pool(&config)?,
            config.database.create_batch_max,
            config.database.create_writers,
            metrics.clone(),
        );
        let state = AppState {
            db,
            creates,
            redis,
            keys,
            cache,
            clicks,
            consumer,
            config,
            metrics,
            proxies,
            targets,
            auth,
            visitors: Arc::new(kurz_common::visitors::VisitorSalt::default()),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                crate::routes::bulk::MAX_CONCURRENT_UPLOADS,
            )),
            imports: Arc::new(tokio::sync::Semaphore::new(
                crate::routes::bulk::MAX_CONCURRENT_IMPORTS,
            )),
            uploading: Arc::default(),
            drawing: Arc::new(tokio::sync::Semaphore::new(
                crate::routes::qr::MAX_CONCURRENT_DRAWINGS,
            )),
            direct_probe: Arc::default(),
        };
        Ok(Self {
            listener,
            admin_listener,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish,
    /// and flushes the click consumer.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let state = self.state;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let consumer = tokio::spawn(state.consumer.clone().run(stop_rx.clone()));
        let schema = tokio::spawn(republish_schema(state.cache.clone(), stop_rx.clone()));
        let replayer = tokio::spawn(crate::cache_sync::run(state.clone(), stop_rx.clone()));
        let pruner = tokio::spawn(prune_idempotency_keys(state.clone(), stop_rx.clone()));
        let retention = tokio::spawn(crate::retention::run(state.clone(), stop_rx.clone()));
        // The day's salt before the first request, so every click from the start has its
        // visitor id; a Redis that does not answer within a second only delays it to the loop.
        let first = state.visitors.refresh(&state.redis, &state.keys);
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(Duration::from_secs(1), first)
            .await
            .map_err(|_| "timed out".to_owned())
        {
            log::warn!(error = e; "visitor salt not loaded at start; retrying in the background");
        }
        let salt = tokio::spawn(refresh_visitor_salt(state.clone(), stop_rx.clone()));

        // The deadline sits inside the logger, so a timed-out request is still logged and counted.
        let app = routes::router(state.clone())
            .layer(axum::middleware::from_fn(crate::panics::catch))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                deadline::enforce,
            ))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                http_log::track,
            ));
        let admin = Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(state.clone());

        let mut admin_stop = stop_rx.clone();
        let admin_server = tokio::spawn(async move {
            axum::serve(self.admin_listener, admin)
                .with_graceful_shutdown(async move {
                    let _ = admin_stop.wait_for(|s| *s).await;
                })
                .await
        });
        log::info!(listen = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(); "kurz-api serving");
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            log::info!("shutdown requested; draining in-flight requests");
        })
        .await;
        let _ = stop_tx.send(true);
        let _ = consumer.await;
        let _ = schema.await;
        let _ = replayer.await;
        let _ = pruner.await;
        let _ = retention.await;
        let _ = salt.await;
        let _ = admin_server.await;
        log::info!("kurz-api stopped");
        served.map_err(|e| format!("server error: {e}"))
    }
}

/// Keeps the key schema's fingerprint in Redis, which may restart empty or be flushed: edges
/// answer redirects from Redis only while they find it.
async fn republish_schema(cache: LinkCache, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let _ = cache.publish_schema().await;
        tokio::select! {
            _ = tokio::time::sleep(SCHEMA_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps the day's visitor salt fresh, as the edge does (`kurz_common::visitors`).
async fn refresh_visitor_salt(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(state.visitors.refresh_after()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (redis, keys) = (&state.redis, &state.keys);
        state
            .visitors
            .refresh_logged(redis, keys, &mut failing)
            .await;
    }
}

/// Idempotency keys are replayed for 24 h; their rows go some time after. Claims ignore expired
/// rows on their own, so this only bounds the table's size. The first run comes a minute after
/// start: an instance that restarts more often than the period still prunes.
async fn prune_idempotency_keys(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = Duration::from_secs(600);
        let pruned = match state.client().await {
            Ok(c) => crate::idempotency::prune(&c, crate::retention::BATCH, &stop).await,
            Err(e) => Err(e),
        };
        match pruned {
            Ok(n) if n > 0 => log::info!(rows = n; "expired idempotency keys pruned"),
            Ok(_) => {}
            Err(e) => log::warn!(error = e.to_string(); "idempotency keys not pruned"),
        }
    }
}

/// Serves `/metrics` on the admin listener while `start` (the wait for PostgreSQL and the
/// migrations) runs, with `kurz_api_database_up` 0 until PostgreSQL answered: an API started
/// during an outage was otherwise a target refusing scrapes until it gave up, and once every
/// API had restarted no process exported the gauge `KurzPostgresDown` watches. The listener's
/// socket is shared with a copy; the copy closes before `start`'s result is returned, and the
/// real admin server serves the socket from then on.
async fn metrics_meanwhile<R>(
    listener: &TcpListener,
    metrics: &Arc<Metrics>,
    start: impl Future<Output = R>,
) -> R {
    use std::future::IntoFuture;
    use std::os::fd::AsFd;
    metrics.database_up.set(0);
    let copy = listener
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .and_then(TcpListener::from_std);
    let copy = match copy {
        Ok(copy) => copy,
        Err(e) => {
            log::warn!(error = e.to_string(); "no metrics while waiting for PostgreSQL");
            return start.await;
        }
    };
    let shown = metrics.clone();
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let shown = shown.clone();
            async move { shown.render() }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(copy, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let started = start.await;
    let _ = stop.send(());
    // A scrape under way finishes; one that does not within a second is cut.
    if tokio::time::timeout(Duration::from_secs(1), &mut server)
        .await
        .is_err()
    {
        server.abort();
        let _ = server.await;
    }
    started
}

async fn wait_for_db(db: &Pool) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        match db.get().await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() >= DB_WAIT => {
                return Err(format!(
                    "PostgreSQL did not answer within {}s: {e}",
                    DB_WAIT.as_secs()
                ))
            }
            Err(e) => {
                log::warn!(error = e.to_string(); "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn metrics_handler(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    // Both pools of the process: the requests' and the create writers'.
    let (main, writers) = (state.db.status(), state.creates.pool_status());
    let (size, available) = (main.size + writers.size, main.available + writers.available);
    state.metrics.db_pool_size.set(size as i64);
    state.metrics.db_pool_available.set(available as i64);
    state
        .metrics
        .db_pool_in_use
        .set(size.saturating_sub(available) as i64);
    state
        .metrics
        .db_pool_waiting
        .set((main.waiting + writers.waiting) as i64);
    // Grouped creates queue briefly under any load (a batch forms while a statement is in
    // flight): a queue that stays long is PostgreSQL not keeping up with the creates.
    state
        .metrics
        .creates_waiting
        .set(i64::try_from(state.creates.waiting()).unwrap_or(i64::MAX));
    let up = database_answers(&state).await;
    state.metrics.database_up.set(i64::from(up));
    let _ = state.consumer.backlog().await;
    let _ = state.consumer.pending().await;
    state.metrics.render()
}

/// Whether PostgreSQL answers `SELECT 1`, within a few seconds (a scrape waits on it). Through
/// the pool; when every pooled connection is in use, through a connection of the probe's own:
/// a busy pool is not a database outage (it has an alert of its own), and a database that
/// stopped answering must not hide behind requests holding every connection.
pub(crate) async fn database_answers(state: &AppState) -> bool {
    use deadpool_postgres::{PoolError, TimeoutType};
    const WITHIN: Duration = Duration::from_secs(2);
    let busy = |s: deadpool_postgres::Status| s.size >= s.max_size && s.available == 0;
    match tokio::time::timeout(WITHIN, state.db.get()).await {
        Ok(Ok(client)) => {
            let select = tokio::time::timeout(WITHIN, client.simple_query("SELECT 1"));
            matches!(select.await, Ok(Ok(_)))
        }
        Ok(Err(PoolError::Timeout(TimeoutType::Wait))) => answers_directly(state).await,
        Err(_) if busy(state.db.status()) => answers_directly(state).await,
        // A connect that failed or timed out, here or in the pool: no answer.
        Err(_) | Ok(Err(_)) => false,
    }
}

/// [`database_answers`] on a connection opened for it and closed after. `/ready` is public and
/// asks this whenever the pool is full: one probe runs at a time and its answer stands for a
/// second, so a flood of requests opens one connection a second, not one each, when
/// PostgreSQL is already the busy one.
async fn answers_directly(state: &AppState) -> bool {
    const FRESH: Duration = Duration::from_secs(1);
    let mut last = state.direct_probe.lock().await;
    if let Some((at, up)) = *last {
        if at.elapsed() < FRESH {
            return up;
        }
    }
    let up = probe_directly(state).await;
    *last = Some((std::time::Instant::now(), up));
    up
}

async fn probe_directly(state: &AppState) -> bool {
    let probe = async {
        let (mut pg, tls) = crate::db::tls::parse(&state.config.database.url).ok()?;
        pg.application_name("kurz-api health probe");
        let (client, connection) = pg.connect(tls).await.ok()?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(_))
    )
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when it is first awaited: the process catches a signal sent while it waits for PostgreSQL or
/// migrates. As PID 1 in a container it has no default action for SIGTERM, so a pod deleted
/// during that wait sat out its whole grace period and was then killed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| {
        signal(kind)
            .inspect_err(|e| log::warn!(error = e.to_string(); "cannot catch a stop signal"))
            .ok()
    });
    async move {
        let [term, int] = handlers;
        let recv = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = recv(term) => {}
            _ = recv(int) => {}
        }
    }
}
