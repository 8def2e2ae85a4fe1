//! A Redis connection that survives Redis going away.
//!
//! The API must keep working when Redis is down (DESIGN.md's degradation table), including when
//! it was down at start-up. So the multiplexed connection is made lazily, dropped when a command
//! fails at the transport level, and remade on a later call — at most one attempt at a time and
//! one every [`RETRY_AFTER`], so a dead Redis costs requests a fast error, not a connect timeout
//! each. A cluster connection is renewed beside the one in use instead (see `failed`).
//!
//! The same handle speaks to one Redis or to a Redis Cluster (`redis.cluster_nodes`). On a
//! cluster every command must keep its keys in one hash slot, and so must a pipeline: commands
//! that span partitions go through [`RedisHandle::query_parts`], which sends one pipeline per
//! partition there and a single pipeline to a single Redis.

use crate::config::RedisSettings;
use prometheus::IntCounter;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, RedisError, RedisFuture, RedisResult, ServerErrorKind,
    Value,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Least time between two connection attempts while Redis is unreachable.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Least time between two renewals of a cluster connection whose nodes time out.
const RENEW_AFTER: Duration = Duration::from_secs(1);

/// Why a Redis call did not happen or failed; callers take their Redis-down path on either.
#[derive(Debug)]
pub struct RedisDown(pub String);

impl std::fmt::Display for RedisDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connection to one Redis or to a cluster; commands run on either through [`ConnectionLike`].
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

pub struct RedisHandle {
    target: Target,
    /// `WAIT <n> <ms>` to append after writes that must survive a failover; `None`: no waiting.
    durable: Option<(u8, u64)>,
    /// Shared with a cluster connection's renewal, which runs in a task of its own.
    state: Arc<Mutex<ConnState>>,
    connecting: tokio::sync::Mutex<()>,
    errors: IntCounter,
    /// The handle for writes followed by `WAIT` (see [`RedisHandle::for_waits`]).
    waits: Option<Box<RedisHandle>>,
}

struct ConnState {
    conn: Option<RedisConn>,
    last_attempt: Option<Instant>,
    /// When a cluster connection's renewal last started, and whether one is under way.
    renewed_at: Option<Instant>,
    renewing: bool,
}

impl RedisHandle {
    /// A single Redis at `url`. No connection is made here; the first call makes it.
    pub fn new(url: &str, timeout: Duration, errors: IntCounter) -> Result<Self, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(Self::with_target(
            Target::Single(Client::open(url)?, config),
            errors,
        ))
    }

    /// A Redis Cluster reached through any of the seed `nodes` (`redis://host:port`).
    pub fn cluster(
        nodes: &[String],
        timeout: Duration,
        errors: IntCounter,
    ) -> Result<Self, RedisError> {
        // Few retries: a command that cannot be answered soon takes the caller's Redis-down
        // path (the API for redirects, PostgreSQL for clicks) rather than holding a request.
        let client = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()?;
        Ok(Self::with_target(Target::Cluster(client), errors))
    }

    /// A cluster when `settings.cluster_nodes` names seeds, a single Redis otherwise.
    pub fn from_settings(settings: &RedisSettings, errors: IntCounter) -> Result<Self, RedisError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut handle = if settings.cluster_nodes.is_empty() {
            Self::new(&settings.url, timeout, errors)?
        } else {
            Self::cluster(&settings.cluster_nodes, timeout, errors)?
        };
        if settings.replica_acks > 0 {
            // Half the command timeout: the WAIT must answer before the client gives up on it.
            let durable = Some((settings.replica_acks, (settings.timeout_ms / 2).max(1)));
            let mut waits = Self::from_settings(
                &RedisSettings {
                    replica_acks: 0,
                    ..settings.clone()
                },
                handle.errors.clone(),
            )?;
            waits.durable = durable;
            handle.durable = durable;
            handle.waits = Some(Box::new(waits));
        }
        Ok(handle)
    }

    /// The handle to send a write and its `WAIT` on. Redis holds a client in `WAIT` until the
    /// replicas answer, and every command the client sent after it with it: up to half
    /// `redis.timeout_ms` for each write while a shard has lost its replica. On connections of
    /// their own, such writes hold up only each other, not the session checks, lookups and
    /// writes that do not wait. Without `redis.replica_acks`: this handle.
    pub fn for_waits(&self) -> &RedisHandle {
        self.waits.as_deref().unwrap_or(self)
    }

    /// `WAIT` for the replicas `redis.replica_acks` asks for, to send after a write in the same
    /// pipeline (it applies to the connection's node, the one that took the write); `None` when
    /// writes need no replica.
    pub fn replica_wait(&self) -> Option<Cmd> {
        let (n, ms) = self.durable?;
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(ms);
        Some(cmd)
    }

    /// Whether writes wait for replicas (`redis.replica_acks` above 0).
    pub fn waits_for_replicas(&self) -> bool {
        self.durable.is_some()
    }

    /// Whether a `WAIT` reply confirms enough replicas.
    pub fn replicated(&self, reply: &Value) -> bool {
        match (self.durable, reply) {
            (None, _) => true,
            (Some((n, _)), Value::Int(acked)) => *acked >= i64::from(n),
            _ => false,
        }
    }

    fn with_target(target: Target, errors: IntCounter) -> Self {
        Self {
            target,
            durable: None,
            state: Arc::new(Mutex::new(ConnState {
                conn: None,
                last_attempt: None,
                renewed_at: None,
                renewing: false,
            })),
            connecting: tokio::sync::Mutex::new(()),
            errors,
            waits: None,
        }
    }

    /// Whether commands go to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// A connection to run commands on (cheap clone of the shared multiplexed one).
    pub async fn conn(&self) -> Result<RedisConn, RedisDown> {
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
        let made = match &self.target {
            Target::Single(client, config) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(RedisConn::Single),
            Target::Cluster(client) => client.get_async_connection().await.map(RedisConn::Cluster),
        };
        match made {
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

    fn cached(&self) -> Option<RedisConn> {
        self.state.lock().expect("redis state lock").conn.clone()
    }

    /// Records a command the server refused inside a pipeline that otherwise answered (`OOM`,
    /// `MISCONF`, `READONLY`, an unconfirmed `WAIT`): counted with the failures, the
    /// connection kept.
    pub fn refused(&self) {
        self.errors.inc();
    }

    /// Records a failed command; transport failures drop the connection so the next call
    /// reconnects (on a cluster: renew it in the background). Returns the error as
    /// [`RedisDown`] for `?`.
    pub fn failed(&self, e: RedisError) -> RedisDown {
        self.errors.inc();
        match &self.target {
            Target::Cluster(client)
                if e.kind() != redis::ErrorKind::ClusterConnectionNotFound && is_transport(&e) =>
            {
                self.renew_in_background(client);
            }
            Target::Cluster(_) if e.kind() != redis::ErrorKind::ClusterConnectionNotFound => {}
            _ if is_transport(&e) || e.is_unrecoverable_error() => {
                self.drop_conn("redis connection lost", &e.to_string())
            }
            Target::Single(..) if demoted(server_kind(&e)) => self.drop_demoted(&e.to_string()),
            _ => {}
        }
        RedisDown(format!("redis command failed: {e}"))
    }

    /// Records a command of a pipeline that the server answered with `e` (the pipeline sent
    /// with its errors kept), as [`Self::failed`] records a failed call.
    pub fn refused_with(&self, e: &redis::ServerError) {
        self.errors.inc();
        if matches!(self.target, Target::Single(..)) && demoted(e.kind()) {
            self.drop_demoted(&e.to_string());
        }
    }

    /// Drops a connection to a server that takes no writes, unless it was made less than
    /// [`DEMOTED_KEPT`] ago: while the address still names the demoted server (a DNS TTL),
    /// each new connection reaches it again, and dropping it at every write would fail the
    /// reads too, which it serves, for the half second each reconnect waits.
    fn drop_demoted(&self, error: &str) {
        let young = {
            let state = self.state.lock().expect("redis state lock");
            state
                .last_attempt
                .is_some_and(|t| t.elapsed() < DEMOTED_KEPT)
        };
        if !young {
            self.drop_conn(DEMOTED, error);
        }
    }

    fn drop_conn(&self, why: &str, error: &str) {
        let mut state = self.state.lock().expect("redis state lock");
        if state.conn.take().is_some() {
            log::warn!(error = error; "{why}");
        }
    }

    /// A cluster node timed out or dropped its connection. The cluster connection keeps the
    /// other nodes, and dropping it would stall every partition until a new one reached every
    /// seed. But it learns a new topology only from a `MOVED` or a failed connect, which a node
    /// that hangs with its sockets open never sends: after its replica took over, its slots
    /// would time out until it woke. So a new connection is made beside the old one, which
    /// serves until the new one replaces it; at most one every [`RENEW_AFTER`].
    fn renew_in_background(&self, client: &ClusterClient) {
        {
            let mut state = self.state.lock().expect("redis state lock");
            if state.renewing || state.renewed_at.is_some_and(|t| t.elapsed() < RENEW_AFTER) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            state.renewing = true;
            state.renewed_at = Some(Instant::now());
            let (client, shared) = (client.clone(), self.state.clone());
            runtime.spawn(async move {
                let made = client.get_async_connection().await;
                let mut state = shared.lock().expect("redis state lock");
                state.renewing = false;
                match made {
                    Ok(conn) => {
                        log::info!("redis cluster connection renewed");
                        state.conn = Some(RedisConn::Cluster(conn));
                    }
                    Err(e) => {
                        log::warn!(error = e.to_string(); "redis cluster connection not renewed")
                    }
                }
            });
        }
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

/// Least age of a connection dropped for reaching a server that takes no writes.
const DEMOTED_KEPT: Duration = Duration::from_secs(1);

/// What is logged when a single Redis stopped taking writes and its connection is dropped.
const DEMOTED: &str =
    "redis takes no writes on this connection (a master demoted to a replica?); reconnecting";

/// Whether the server answered as a replica does to a write. A master demoted by a failover
/// behind one address (DNS, a moved IP; Sentinel would close the clients' connections itself)
/// keeps the connections it had: only a new one reaches the server the address names now.
fn demoted(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    )
}

fn server_kind(e: &RedisError) -> Option<ServerErrorKind> {
    match e.kind() {
        redis::ErrorKind::Server(kind) => Some(kind),
        _ => None,
    }
}

/// A failure of the connection rather than of the command (whose outcome is then unknown).
pub fn is_transport(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

impl RedisHandle {
    /// Runs commands that belong to partitions (`(partition, command)`; a command's keys all in
    /// its partition's hash slot): one pipeline on a single Redis, one pipeline per partition,
    /// concurrently, on a cluster. Replies come in the order of `cmds`; like a pipeline, the call
    /// fails with the first error.
    pub async fn pipeline_parts(
        &self,
        conn: &RedisConn,
        cmds: &[(u16, Cmd)],
    ) -> RedisResult<Vec<Value>> {
        self.pipeline_parts_each(conn, cmds)
            .await
            .into_iter()
            .collect()
    }

    /// [`Self::pipeline_parts`], each command's reply on its own: on a cluster a partition
    /// whose master fails or hangs fails only its own commands, and the others' replies (an
    /// `XREADGROUP` that handed entries over, say) are not thrown away with it.
    pub async fn pipeline_parts_each(
        &self,
        conn: &RedisConn,
        cmds: &[(u16, Cmd)],
    ) -> Vec<RedisResult<Value>> {
        if cmds.is_empty() {
            return Vec::new();
        }
        if !matches!(conn, RedisConn::Cluster(_)) {
            let mut pipe = redis::pipe();
            for (_, cmd) in cmds {
                pipe.add_command(cmd.clone());
            }
            // One server: the pipeline answers whole or fails whole.
            return match pipe.query_async::<Vec<Value>>(&mut conn.clone()).await {
                Ok(replies) => replies.into_iter().map(Ok).collect(),
                Err(e) => cmds.iter().map(|_| Err(e.clone())).collect(),
            };
        }
        let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, (p, _)) in cmds.iter().enumerate() {
            match parts.iter_mut().find(|(q, _)| q == p) {
                Some((_, members)) => members.push(i),
                None => parts.push((*p, vec![i])),
            }
        }
        let sent = parts.iter().map(|(_, members)| {
            let mut pipe = redis::pipe();
            for &i in members {
                pipe.add_command(cmds[i].1.clone());
            }
            let mut conn = conn.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        });
        let replies = futures_util::future::join_all(sent).await;
        let mut out: Vec<RedisResult<Value>> = cmds.iter().map(|_| Ok(Value::Nil)).collect();
        for ((_, members), reply) in parts.iter().zip(replies) {
            match reply {
                Ok(values) => {
                    for (&i, value) in members.iter().zip(values) {
                        out[i] = Ok(value);
                    }
                }
                Err(e) => {
                    for &i in members {
                        out[i] = Err(e.clone());
                    }
                }
            }
        }
        out
    }

    /// [`Self::pipeline_parts`] on the shared connection, failures mapped through
    /// [`Self::failed`].
    pub async fn query_parts(&self, cmds: &[(u16, Cmd)]) -> Result<Vec<Value>, RedisDown> {
        let conn = self.conn().await?;
        self.pipeline_parts(&conn, cmds)
            .await
            .map_err(|e| self.failed(e))
    }
}

/// A command or a pipeline, so [`RedisHandle::query`] takes either.
pub trait RedisRunnable {
    fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut RedisConn,
    ) -> impl std::future::Future<Output = Result<T, RedisError>> + Send;
}

impl RedisRunnable for &redis::Cmd {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut RedisConn) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl RedisRunnable for &redis::Pipeline {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut RedisConn) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl RedisRunnable for &mut redis::Cmd {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut RedisConn) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Persistence, PrivateRedis, RedisCluster};

    /// A master demoted behind its address (a failover by DNS or a moved IP) keeps the
    /// connections it had and answers every write `READONLY`: the handle leaves it for a new
    /// connection, which reaches whatever the address names now.
    #[tokio::test]
    async fn a_single_redis_that_takes_no_writes_is_connected_again() {
        let redis = PrivateRedis::start(Persistence::None);
        let errors = IntCounter::new("test_redis_errors", "test").unwrap();
        let handle = RedisHandle::new(&redis.url(), Duration::from_secs(2), errors).unwrap();
        let connected = Instant::now();
        let first: i64 = handle.query(redis::cmd("CLIENT").arg("ID")).await.unwrap();
        redis.demote();
        let set = redis::cmd("SET").arg("k").arg("v").clone();
        let write = || handle.query::<()>(&set);
        assert!(write().await.is_err());
        let read = handle
            .query::<Option<String>>(redis::cmd("GET").arg("k"))
            .await;
        // A connection younger than DEMOTED_KEPT is kept, and serves reads meanwhile (checked
        // when the machine was quick enough to ask within it).
        if connected.elapsed() < DEMOTED_KEPT - Duration::from_millis(100) {
            assert!(read.is_ok(), "{:?}", read.err());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = write().await;
            // A reconnect waits RETRY_AFTER after the last attempt.
            match handle.query::<i64>(redis::cmd("CLIENT").arg("ID")).await {
                Ok(id) if id != first => break,
                Ok(_) => assert!(Instant::now() < deadline, "the connection was kept"),
                Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// On a Redis Cluster a master that stops answering fails the commands of its own slots
    /// only: the connection to the other masters is kept, so their partitions go on without
    /// waiting for a new connection to every seed (the hung one included). Once its replica
    /// has taken over, its slots work again, although the hung master never answers.
    #[tokio::test]
    async fn a_hung_cluster_master_fails_only_its_own_keys_until_its_replica_takes_over() {
        let cluster = RedisCluster::start();
        let errors = IntCounter::new("test_redis_errors", "test").unwrap();
        let handle =
            RedisHandle::cluster(&cluster.seeds(), Duration::from_millis(300), errors).unwrap();
        let hung = "test:{hung}".to_owned();
        let hung_master = cluster.master_of(&hung);
        let healthy = (0..)
            .map(|i| format!("test:{{healthy{i}}}"))
            .find(|key| cluster.master_of(key) != hung_master)
            .unwrap();
        for key in [&hung, &healthy] {
            handle
                .query::<()>(redis::cmd("SET").arg(key).arg("1"))
                .await
                .unwrap();
        }

        let _paused = cluster.paused(hung_master);
        assert!(handle
            .query::<Option<String>>(redis::cmd("GET").arg(&hung))
            .await
            .is_err());
        assert!(
            handle.cached().is_some(),
            "one node's timeout dropped the connection to every node"
        );
        let value = handle
            .query::<Option<String>>(redis::cmd("GET").arg(&healthy))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("1"));
        // Work spanning partitions (the consumer's read of every stream) gets the healthy
        // partition's reply, and only the hung one's fails.
        let conn = handle.conn().await.unwrap();
        let get = |key: &str| redis::cmd("GET").arg(key).to_owned();
        let replies = handle
            .pipeline_parts_each(&conn, &[(0, get(&hung)), (1, get(&healthy))])
            .await;
        assert!(replies[0].is_err(), "{replies:?}");
        assert_eq!(
            replies[1].as_ref().ok(),
            Some(&Value::BulkString(b"1".to_vec()))
        );

        cluster.wait_failover(&hung, hung_master);
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle
            .query::<()>(redis::cmd("SET").arg(&hung).arg("2"))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the hung master's slots still fail after its replica took over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
