//! Read-your-writes: before a read of events or stats, store the clicks that were in the
//! streams when it began, within a time budget.
//!
//! The drain stops at each partition's newest entry at the moment the read began, so a steady
//! stream of redirects cannot keep a read spinning, and it gives up when the budget is spent, so
//! a backlog after an outage cannot hold a read for seconds: the read then answers from what is
//! stored and says how much is missing.

use super::consumer::Consumer;
use std::time::Duration;
use tokio::time::Instant;

/// How a read of events went about the clicks recorded before it.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every click answered before the read began is stored.
    Complete,
    /// The budget ran out or Redis could not be asked: this many entries (`None`: unknown)
    /// were still in the streams when the read gave up waiting.
    Partial(Option<i64>),
}

impl Consumer {
    /// Stores every click that was in the streams when the call began, including entries
    /// pending in other consumers, within `budget`. Reads of events call this first, which is
    /// what makes a click visible to any read that starts after its 302. Clicks appended after
    /// the call began are not waited for, so a steady stream of redirects cannot keep a read
    /// spinning. With Redis down it returns at once: clicks then went to PostgreSQL directly.
    pub async fn drain(&self, budget: Duration) -> Drained {
        let deadline = Instant::now() + budget;
        let heads = match self.stream.heads().await {
            Ok(h) => h,
            Err(_) => return Drained::Partial(None),
        };
        if heads.iter().all(Option::is_none) {
            return Drained::Complete;
        }
        let Ok(mut work) = tokio::time::timeout_at(deadline, self.work.lock()).await else {
            return self.partial().await;
        };
        // Each step is bounded (one batch, statements of a bounded size), so the deadline is checked between
        // steps rather than by cancelling one halfway through its commit.
        while Instant::now() < deadline {
            let left = match self.stream.unconsumed_up_to(&heads).await {
                Ok(left) => left,
                Err(_) => return Drained::Partial(None),
            };
            if left.is_empty() {
                return Drained::Complete;
            }
            let result = match self.step_new(&mut work).await {
                Ok(0) => match self.step_claim(&mut work, 0, &left).await {
                    // Nothing new and nothing pending moved, yet entries remain.
                    Ok(0) => self.delete_acknowledged(&left, &heads).await,
                    other => other,
                },
                other => other,
            };
            if let Err(e) = result {
                log::warn!(error = e.to_string(); "click backlog could not be drained before a read");
                break;
            }
        }
        // What is stored is acknowledged before the backlog is counted, so the answer's pending
        // count does not include clicks it already shows.
        if let Err(e) = self.ack_committed(&mut work).await {
            log::warn!(error = e.to_string(); "stored clicks could not be acknowledged before a read");
        }
        drop(work);
        self.partial().await
    }

    /// Entries of `left` that are neither new nor pending were acknowledged already: see
    /// [`ClickStream::delete_acknowledged`](super::stream::ClickStream::delete_acknowledged).
    async fn delete_acknowledged(
        &self,
        left: &[u16],
        heads: &[Option<String>],
    ) -> Result<usize, super::consumer::StepError> {
        let mut deleted = 0;
        for p in left {
            let Some(head) = &heads[usize::from(*p)] else {
                continue;
            };
            deleted += self
                .stream
                .delete_acknowledged(*p, head)
                .await
                .map_err(|e| super::consumer::StepError::Redis(e.to_string()))?;
        }
        if deleted > 0 {
            log::warn!(entries = deleted; "deleted click entries acknowledged earlier but left in the streams");
        }
        Ok(deleted)
    }

    async fn partial(&self) -> Drained {
        Drained::Partial(self.backlog().await.ok())
    }
}
