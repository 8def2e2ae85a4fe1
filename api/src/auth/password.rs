//! argon2id password hashing, run on the blocking pool with bounded concurrency.
//!
//! Each hash takes tens of milliseconds of CPU and ~19 MiB. Run on the async workers, a login
//! flood would stall every other request; unbounded on the blocking pool, it would take every
//! core and a lot of memory. So hashes wait for one of `max_concurrent_hashes` permits (waiting
//! is async and costs nothing) and then run on a blocking thread.

use crate::config::AuthConfig;
use crate::error::ApiError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct Passwords {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist, so an
    /// unknown user costs the same time as a wrong password.
    dummy: String,
    /// Hashes and verifications run so far (tests check who spends a permit).
    runs: AtomicU64,
    /// Hashes and verifications waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    capacity: u32,
}

/// One waiter counted in [`Passwords::waiting`] until dropped (its permit came, or its request
/// went away).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Passwords {
    pub fn new(cfg: &AuthConfig) -> Result<Self, String> {
        let a = &cfg.argon2;
        let params = Params::new(a.memory_kib, a.iterations, a.parallelism, None)
            .map_err(|e| format!("config key `auth.argon2`: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = hash_with(&argon, &format!("{:032x}", rand::random::<u128>()))?;
        Ok(Self {
            argon,
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_hashes)),
            dummy,
            runs: AtomicU64::new(0),
            waiting: Arc::new(AtomicUsize::new(0)),
            capacity: u32::try_from(cfg.max_concurrent_hashes)
                .map_err(|_| "config key `auth.max_concurrent_hashes` is too large".to_owned())?,
        })
    }

    /// Hashes and verifications waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Test hook: holds every permit until the guard is dropped, so hashes queue as they do
    /// in a log-in flood.
    #[doc(hidden)]
    pub async fn occupy_all(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_many_owned(self.capacity)
            .await
            .expect("hash permits are never closed")
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Waiting(self.waiting.clone());
        self.permits
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("hash pool closed".into()))
    }

    /// How many hashes and verifications have run: the permits are shared by every log-in,
    /// so a request that may not act must be refused before it takes one.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.permit().await?;
        self.runs.fetch_add(1, Ordering::Relaxed);
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || hash_with(&argon, &password))
            .await
            .map_err(|e| ApiError::Internal(format!("hash task: {e}")))?
            .map_err(ApiError::Internal)
    }

    /// Whether `password` matches `stored`; with no stored hash, verifies against the dummy and
    /// answers false, taking the same time.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let _permit = self.permit().await?;
        self.runs.fetch_add(1, Ordering::Relaxed);
        let argon = self.argon.clone();
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .is_ok_and(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verify task: {e}")))?;
        Ok(known && ok)
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}
