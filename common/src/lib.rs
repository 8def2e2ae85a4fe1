//! kurz-common: what the edge (`kurz-proxy`) and the API (`kurz-api`) must agree on.
//!
//! Nothing here knows about axum or Pingora; both binaries build on it.
//!
//! # Layout
//! - [`env`]: environment variables read through a source a test can replace.
//! - [`config`]: loading a YAML config file strictly (unknown keys are errors).
//! - [`http`]: the error body and the status classes both binaries answer with.
//! - [`clicks`]: the click stream entry format and IP truncation.
//! - [`keys`]: the Redis key schema and the cached-link encoding both sides read and write.
//! - [`shortcode`]: generating and validating short codes, reserved words.
//! - [`target`]: the rules a link's target URL must meet.
//! - [`logging`]: the JSON line format every kurz log uses.
//! - [`open_files`]: raising the open-file limit a container or a shell starts a process with.
//! - [`redis_handle`]: a Redis connection that survives Redis going away.
//! - [`time`]: the contract's timestamp format.
//! - [`visit`]: the one Redis script a redirect runs: look up, count, append the click.
//! - [`visitors`]: unique visitors from a daily salt, without keeping addresses.
//! - `testing` (feature `testing`, tests only): private Redis and PostgreSQL servers to break.

/// The git commit this binary was built from (`unknown` outside a checkout).
pub const GIT_SHA: &str = env!("KURZ_GIT_SHA");

pub mod clicks;
pub mod config;
pub mod env;
pub mod http;
pub mod keys;
pub mod logging;
pub mod open_files;
pub mod proxies;
pub mod redis_handle;
pub mod shortcode;
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod visit;
pub mod visitors;
