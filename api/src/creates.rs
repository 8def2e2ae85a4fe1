//! Group commit of link creates: concurrent `POST /urls` share one statement and one commit.
//!
//! A create is one statement (`db::urls::insert_url_unless_taken`), and PostgreSQL spends most
//! of a one-row create on the statement and its commit rather than on the row: on the bench data
//! set, 16 creates in one statement cost about a sixth of 16 statements (docs/capacity.md). So
//! creates queue here, and each writer takes everything waiting when it is free. There is no
//! timer: a lone create goes at once, and batches only form while a statement is in flight.
//!
//! Outcomes stay per create. A batch answers each create as its own statement would have (the
//! link, its code taken, its owner gone); a statement PostgreSQL refuses for one row (a check
//! constraint) is retried one create at a time, so one bad row fails only its own request; a
//! database that is down fails them all with 503, as it would have one by one. Creates with an
//! idempotency key do not come here: they need their own transaction.

use crate::db::urls::{self, Inserted, NewLink, NewLinkBuf};
use crate::error::{conflicted, store_down, ApiError, ApiResult};
use crate::metrics::Metrics;
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

struct Job {
    link: NewLinkBuf,
    reply: oneshot::Sender<ApiResult<Inserted>>,
    /// The request's deadline handshake (`crate::deadline`): committed when the job's
    /// statement starts, after which the request waits for its outcome instead of answering 503.
    committed: Option<crate::deadline::Commitment>,
}

/// The queue in front of the create writers. Cloning shares it.
#[derive(Clone)]
pub struct Creates {
    queue: mpsc::Sender<Job>,
    /// The writers' connections (`crate::startup`), for the pool metrics.
    pool: Pool,
}

impl Creates {
    /// Starts `writers` writer tasks, each committing at most `batch_max` creates per statement.
    /// They stop once every clone of the returned handle is dropped.
    pub fn start(db: Pool, batch_max: usize, writers: usize, metrics: Arc<Metrics>) -> Self {
        let batch_max = batch_max.max(1);
        let (queue, rx) = mpsc::channel(batch_max * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(db.clone(), rx.clone(), batch_max, metrics.clone()));
        }
        Self { queue, pool: db }
    }

    /// The writers' connections: open, idle, and writers waiting for one.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Creates queued and not yet taken by a writer.
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Inserts `new` with whatever other creates are waiting; answers as
    /// [`urls::insert_url_unless_taken`] would for it alone.
    pub async fn insert(&self, new: &NewLink<'_>) -> ApiResult<Inserted> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            link: new.to_buf(),
            reply,
            committed: crate::deadline::commitment(),
        };
        if self.queue.send(job).await.is_err() {
            return Err(ApiError::Internal("the create writers have stopped".into()));
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("a create writer stopped before answering".into()))?
    }
}

async fn write(
    db: Pool,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    batch_max: usize,
    metrics: Arc<Metrics>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < batch_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        // A request that gave up (its deadline, or its client went away) learns nothing of its
        // link: better not to make one. One still waiting is committed to: its deadline can no
        // longer answer 503 for a link that is made.
        jobs.retain(|job| {
            !job.reply.is_closed() && job.committed.as_ref().is_none_or(|c| c.commit())
        });
        if !jobs.is_empty() {
            metrics.create_batch_size.observe(jobs.len() as f64);
            commit(&db, jobs).await;
        }
    }
}

async fn commit(db: &Pool, jobs: Vec<Job>) {
    let client = match db.get().await {
        Ok(client) => client,
        Err(e) => {
            let cause = format!("postgres pool: {e}");
            for job in jobs {
                let _ = job.reply.send(Err(ApiError::StoreDown(cause.clone())));
            }
            return;
        }
    };
    // One statement cannot insert a code twice; the repeats go after the batch, alone, and find
    // the code taken like any create that came later.
    let mut seen = HashSet::new();
    let (batch, mut alone): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| seen.insert(job.link.short_code().to_owned()));
    if batch.len() == 1 {
        alone.splice(0..0, batch);
    } else {
        let news: Vec<NewLink<'_>> = batch.iter().map(|job| job.link.as_new()).collect();
        let outcome = urls::insert_urls(&client, &news).await;
        drop(news);
        match outcome {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            // A batch that lost a lock conflict goes one create at a time below, as any other
            // refused batch: each has its own chance instead of all of them a 503.
            Err(e) if store_down(&e) && !conflicted(&e) => {
                let ApiError::StoreDown(cause) = ApiError::from(e) else {
                    unreachable!("store_down errors map to StoreDown")
                };
                for job in batch.into_iter().chain(alone) {
                    let _ = job.reply.send(Err(ApiError::StoreDown(cause.clone())));
                }
                return;
            }
            other => {
                let why = match other {
                    Err(e) => e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_owned()),
                    Ok(_) => "fewer outcomes than creates".to_owned(),
                };
                log::warn!(creates = batch.len(), error = why; "a batch of creates was refused; inserting them one at a time");
                alone.splice(0..0, batch);
            }
        }
    }
    for job in alone {
        let outcome = urls::insert_url_unless_taken(&client, &job.link.as_new())
            .await
            .map_err(ApiError::from);
        let _ = job.reply.send(outcome);
    }
}
