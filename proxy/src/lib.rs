//! kurz-proxy: the edge. Terminates TLS, rate-limits, answers redirects from the near-cache and
//! Redis (recording clicks into the API's click stream), and forwards everything else to the API
//! pool with health-checked round robin.
//!
//! # Layout
//! - [`config`]: `conf/proxy.yaml` + environment, validated (`--check`).
//! - [`service`]: the `ProxyHttp` implementation; its phases hand off to the modules below.
//! - [`redirect`]: the hot path (near-cache → one Redis script: lookup + click append).
//! - [`near_cache`], [`invalidations`]: the in-process cache and the channel that keeps it true.
//! - [`key_check`]: redirects come from Redis only while the API's key schema matches ours.
//! - [`rate_limit`]: per-client token buckets (who the client is: `kurz_common::proxies`).
//! - [`upstreams`]: the API pool, its health checks and its reloadable list; [`reload`]: SIGHUP.
//! - [`admin`]: `/metrics` and health on the admin listener; [`metrics`]: metric definitions.
//! - [`respond`]: responses the edge writes itself; [`cert_expiry`]: the TLS expiry gauge.
//! - [`server`]: assembling the Pingora server from the config.

pub mod admin;
pub mod cert_expiry;
pub mod click_log;
pub mod config;
pub mod conn;
pub mod drain;
pub mod invalidations;
pub mod key_check;
pub mod metrics;
pub mod near_cache;
pub mod rate_limit;
pub mod redirect;
pub mod reload;
pub mod respond;
pub mod server;
pub mod service;
pub mod tls_cert;
pub mod upstreams;
pub mod visitor_salt;
