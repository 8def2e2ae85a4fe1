//! kurz-api: the REST upstream behind the kurz edge — users, links, events and redirects on
//! PostgreSQL, with Redis as link cache, click stream and invalidation bus.
//!
//! # Layout
//! - [`config`]: `conf/api.yaml` + environment overrides, validated.
//! - [`startup`]: building the pools, migrating, binding, serving, graceful shutdown.
//! - [`state`]: what handlers share.
//! - [`routes`]: one module per resource; [`extract`] and [`pagination`] parse requests.
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`db`]: SQL as small functions, one module per table; [`import`]: bulk CSV imports.
//! - [`cache`]: the Redis link cache; [`cache_sync`]: link states reach it despite failures;
//!   [`clicks`]: the click stream and its consumer.
//! - [`auth`]: passwords, sessions, API keys, lock-out and the access policy ([`auth::Caller`]).
//! - [`idempotency`]: `Idempotency-Key` for creates; [`qr`]: QR code images of short URLs.
//! - [`redis_handle`]: a Redis connection that survives Redis going away.
//! - [`http_log`], [`metrics`]: request logs, request ids and Prometheus metrics;
//!   [`deadline`]: the per-request time limit.
//! - [`migrate`]: embedded schema migrations; [`sample`]: sample data sets in the seed format.
//! - [`web`]: the web app for people (pages, cookie sessions, CSRF), served beside the API.

pub mod auth;
pub mod cache;
pub mod cache_sync;
pub mod clicks;
pub mod config;
pub mod creates;
pub mod csv_cell;
pub mod db;
pub mod deadline;
pub mod error;
pub mod extract;
pub mod http_log;
pub mod idempotency;
pub mod identity;
pub mod import;
pub mod metrics;
pub mod migrate;
pub mod pagination;
pub mod panics;
pub mod qr;
pub use kurz_common::redis_handle;
pub mod retention;
pub mod routes;
pub mod sample;
pub mod startup;
pub mod state;
pub mod tags;
pub mod web;
