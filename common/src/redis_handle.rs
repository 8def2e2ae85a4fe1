//! A Redis connection that survives Redis going away.
//!
//! The API must keep working when Redis is down (DESIGN.md's degradation table), including when
//! it was down at start-up. So the multiplexed connection is made lazily, dropped when a command
//! fails at the transport level, and remade on a later call — at most one attempt at a time and
//! one every [`RETRY_AFTER`], so a dead Redis costs requests a fast error, not a connect timeout
//! each.

use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two connection attempts while Redis is unreachable.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Why a Redis call did not happen or failed; callers take their Redis-down path on either.
#[derive(Debug)]
pub struct RedisDown(pub String);

impl std::fmt::Display for RedisDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct RedisHandle {
    client: Client,
    config: AsyncConnectionConfig,
    state: Mutex<ConnState>,
    connecting: tokio::sync::Mutex<()>,
    errors: IntCounter,
}

struct ConnState {
    conn: Option<MultiplexedConnection>,
    last_attempt: Option<Instant>,
}

impl RedisHandle {
    /// No connection is made here; the first call makes it.
    pub fn new(url: &str, timeout: Duration, errors: IntCounter) -> Result<Self, RedisError> {
        Ok(Self {
            client: Client::open(url)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            state: Mutex::new(ConnState {
                conn: None,
                last_attempt: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            errors,
        })
    }

    /// A connection to run commands on (cheap clone of the shared multiplexed one).
    pub async fn conn(&self) -> Result<MultiplexedConnection, RedisDown> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _guard = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        {
            let mut state = self.state.lock().expect("redis state lock");
            if state
                .last_attempt
                .is_some_and(|t| t.elapsed() < RETRY_AFTER)
            {
                return Err(RedisDown("redis unavailable (reconnect pending)".into()));
            }
            state.last_attempt = Some(Instant::now());
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(conn) => {
                log::info!("redis connected");
                self.state.lock().expect("redis state lock").conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                self.errors.inc();
                Err(RedisDown(format!("redis unavailable: {e}")))
            }
        }
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.state.lock().expect("redis state lock").conn.clone()
    }

    /// Records a failed command; transport failures drop the connection so the next call
    /// reconnects. Returns the error as [`RedisDown`] for `?`.
    pub fn failed(&self, e: RedisError) -> RedisDown {
        self.errors.inc();
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            let mut state = self.state.lock().expect("redis state lock");
            if state.conn.take().is_some() {
                log::warn!(error = e.to_string(); "redis connection lost");
            }
        }
        RedisDown(format!("redis command failed: {e}"))
    }

    /// Runs one command or pipeline, mapping failures through [`Self::failed`].
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: impl RedisRunnable,
    ) -> Result<T, RedisDown> {
        let mut conn = self.conn().await?;
        cmd.run(&mut conn).await.map_err(|e| self.failed(e))
    }
}

/// A command or a pipeline, so [`RedisHandle::query`] takes either.
pub trait RedisRunnable {
    fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> impl std::future::Future<Output = Result<T, RedisError>> + Send;
}

impl RedisRunnable for &redis::Cmd {
    async fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl RedisRunnable for &redis::Pipeline {
    async fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl RedisRunnable for &mut redis::Cmd {
    async fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}
