//! Clicks: recorded at redirect time into the Redis click stream, drained into `events` by a
//! consumer group (see [`consumer`]).
//!
//! Why a stream and not an INSERT per click: the redirect stays one Redis round trip, PostgreSQL
//! gets batched inserts, and clicks survive a PostgreSQL outage in the stream. Read-your-writes
//! holds because every read of events drains the streams first.

pub mod consumer;
pub mod drain;
pub mod stream;

use crate::metrics::Metrics;
use crate::redis_handle::RedisHandle;
use deadpool_postgres::Pool;
use kurz_common::clicks::Click;
use kurz_common::keys::KeySchema;
use serde_json::json;
use std::sync::Arc;

/// The details object of a click event.
pub fn click_details(click: &Click) -> serde_json::Value {
    let mut details = json!({
        "short_code": click.code,
        "original_url": click.target,
        "referrer": click.referrer,
        "user_agent": click.user_agent,
    });
    // `privacy.store_ip: none` leaves no address at all, not an empty one.
    if !click.ip.is_empty() {
        details["ip"] = json!(click.ip);
    }
    details
}

#[derive(Clone)]
pub struct ClickRecorder {
    redis: Arc<RedisHandle>,
    db: Pool,
    keys: KeySchema,
    sample_rate: f64,
    metrics: Arc<Metrics>,
}

impl ClickRecorder {
    pub fn new(
        redis: Arc<RedisHandle>,
        db: Pool,
        keys: KeySchema,
        sample_rate: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redis,
            db,
            keys,
            sample_rate,
            metrics,
        }
    }

    /// Records one click before the redirect is answered: appended to its partition's stream,
    /// or inserted directly when Redis is down. A click neither can take is counted as lost; the
    /// redirect still answers, because a visitor must not pay for our bookkeeping.
    pub async fn record(&self, click: Click) {
        if self.sample_rate < 1.0 && rand::random::<f64>() >= self.sample_rate {
            self.metrics
                .clicks
                .with_label_values(&["sampled_out"])
                .inc();
            return;
        }
        let append = click.xadd(&self.keys.clicks_for(&click.code));
        let appended = match self.redis.replica_wait() {
            None => self.redis.query::<String>(&append).await.map(|_| true),
            Some(wait) => {
                let mut pipe = redis::pipe();
                pipe.add_command(append).add_command(wait);
                self.redis
                    .query::<(String, redis::Value)>(&pipe)
                    .await
                    .map(|(_, acked)| self.redis.replicated(&acked))
            }
        };
        let why = match appended {
            Ok(true) => {
                self.metrics.clicks.with_label_values(&["stream"]).inc();
                return;
            }
            // In the stream, but a failover could still lose it: PostgreSQL gets it too, and the
            // consumer's insert of the stream copy finds its click id taken.
            Ok(false) => "click not confirmed by redis.replica_acks replicas".to_owned(),
            Err(down) => down.to_string(),
        };
        log::warn!(error = why, url_id = click.url_id; "click stream unavailable, inserting directly");
        match self.insert_direct(&click).await {
            Ok(()) => self.metrics.clicks.with_label_values(&["direct"]).inc(),
            Err(e) => {
                self.metrics.clicks.with_label_values(&["lost"]).inc();
                log::error!(error = e, url_id = click.url_id; "click lost: redis and postgres both failed");
            }
        }
    }

    async fn insert_direct(&self, click: &Click) -> Result<(), String> {
        let client = self.db.get().await.map_err(|e| e.to_string())?;
        let ts =
            chrono::DateTime::from_timestamp_millis(click.ts_ms).unwrap_or_else(chrono::Utc::now);
        let stmt = client
            .prepare_cached(
                "INSERT INTO events (url_id, user_id, event_type, occurred_at, details, click_id) \
                 VALUES ($1, $2, 'click', $3, $4, $5) ON CONFLICT (click_id) DO NOTHING",
            )
            .await
            .map_err(|e| e.to_string())?;
        client
            .execute(
                &stmt,
                &[
                    &click.url_id,
                    &click.user_id,
                    &ts,
                    &click_details(click),
                    &click.id,
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
