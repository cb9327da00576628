//! pillowtop: runs change processors as sandboxed WebAssembly components.
//!
//! Data flows one way:
//!
//! ```text
//! feed ──> pillow ──> wasm ──> sink ──> checkpoint
//!  │         │          │        │
//!  │         │          │        └ sink::delivery: Elasticsearch first, then one store
//!  │         │          │          transaction with rows, pillow errors and the checkpoint
//!  │         │          └ wasm: engine, compile cache, limits, sandboxed WASI, host imports
//!  │         └ pillow: startup, chunks (decode, dedupe, lanes), the hot-reload swap
//!  └ feed::embedded (SQLite log), feed::kafka
//! ```
//!
//! **The rule: no module reaches back.** A module uses only modules below
//! it (in the table, a module's row is above everything it uses); a need
//! two modules share gets a module of its own below both (an outage rule,
//! a database helper). The unit test `layers` reads every `crate::` path of
//! `host/src` and fails on any import cycle.
//!
//! | module | owns |
//! |---|---|
//! | [`ucr`] | `pillowtop ucr eval` (a data source, expression or filter on one document, through the plugin) and `ucr rebuild` (one data source's table anew from the feed) |
//! | [`process`] | the whole host as one call: open, start, supervise every task, stop |
//! | [`replay`] | a plugin version over a range of a pillow's feed, read-only (`pillowtop replay`, `plugin check --against-feed`) |
//! | [`admin`] | the admin HTTP endpoint (the firefighting page, status, health, metrics, plugins, reloads), its token, and its client |
//! | [`status`] | what operators see: one status for `pillowtop status`, `/status`, the page, `/healthz` and the gauges of `/metrics` |
//! | [`triage`] | operator tools for pillow errors: list, show, re-queue, purge, make a fixture |
//! | [`conformance`] | `pillowtop plugin check`: load, declaration, fixtures, fuel |
//! | [`pillow`] | a pillow and its run loop: startup, chunks, the hot-reload swap |
//! | [`retry`] | the retry queue: due pillow errors re-run (or republished), fairly by domain |
//! | [`reload`] | hot reload and deployment: plugin slots, watching files, staging checked versions, candidates, promote, rollback |
//! | [`resource`] | lookup resources of the host config: queries, indices, store tables, cached and prefetched |
//! | [`source`] | document sources: a chunk's documents read in one batch per database or index |
//! | [`sink`] | writing actions: Elasticsearch, the SQL sink tables, delivery of a chunk |
//! | [`checkpoint`] | partition positions, when checkpoints are saved, moving them |
//! | [`store`] | checkpoints, host processes (one liveness rule), plugin events, shadow runs |
//! | [`shadow`] | a candidate version beside the live one: comparing actions, tallies, kept differences |
//! | [`fixtures`] | golden fixtures: change in, actions out |
//! | [`json_diff`] | where two JSON values differ, as paths |
//! | [`wasm`] | compiling, caching, instantiating and calling components under limits |
//! | [`lookup`] | the read-only data plugins may look up: the contract and its cache |
//! | [`errors`] | pillow errors end to end: kinds, the record, backoff, SQL |
//! | [`metrics`] | Prometheus metrics, each declared once |
//! | [`partition`] | which process reads which partitions |
//! | [`generate`] | synthetic CommCare-like changes (`pillowtop gen`) |
//! | [`change`] | decoding feed messages into changes (CommCare `ChangeMeta`) |
//! | [`feed`] | partitioned ordered logs: the embedded SQLite feed, Kafka; publishing |
//! | [`db`] | the store's database: SQLite or PostgreSQL, transactions, error classification |
//! | [`outage`] | telling outages from refusals, backoff, waiting for a server |
//! | [`manifest`] | plugin manifests (`plugin.toml`) |
//! | [`scaffold`] | `pillowtop plugin new`: starter plugins in Rust, Python, JavaScript |
//! | [`config`] | the host config (`pillowtop.toml`) |
//! | [`action`] | what plugins return and declare, in host types |
//! | [`file`] | reading user-named files with a size bound |
//! | [`rate`] | rate limiting log lines |
//! | [`time`] | RFC 3339 timestamps without a date library |
//! | [`shard`] | CommCare's shard routing: document id hash, shard map |

#![warn(missing_docs)]

pub mod action;
pub mod admin;
pub mod change;
pub mod checkpoint;
pub mod config;
pub mod conformance;
pub mod db;
pub mod errors;
pub mod feed;
pub mod file;
pub mod fixtures;
pub mod generate;
pub mod json_diff;
#[cfg(test)]
mod layers;
pub mod lookup;
pub mod manifest;
pub mod metrics;
pub mod outage;
pub mod partition;
pub mod pillow;
pub mod process;
pub mod rate;
pub mod reload;
pub mod replay;
pub mod resource;
pub mod retry;
pub mod scaffold;
pub mod shadow;
pub mod shard;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
pub mod time;
pub mod triage;
pub mod ucr;
pub mod wasm;
