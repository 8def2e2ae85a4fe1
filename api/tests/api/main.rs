//! Integration tests of kurz-api against real PostgreSQL and Redis.

mod auth;
mod bulk;
mod cli;
mod clicks;
mod cluster;
mod contract;
mod crash;
mod database;
mod events;
mod faults;
mod health;
mod helpers;
mod hostile;
mod imports;
mod link_password;
mod link_state;
mod malformed;
mod migrate;
mod openapi;
mod qr;
mod redirect;
mod resilience;
mod retention;
mod urls;
mod users;
mod visits;
