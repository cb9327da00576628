//! pillowtop: runs change processors as sandboxed WebAssembly components.
//!
//! Data flows one way, and no module reaches back:
//!
//! ```text
//! feed ──> pillow ──> wasm ──> sink ──> checkpoint
//!  │         │          │        │
//!  │         │          │        ├ sink::elastic (documents, bulk, external versions), before the store commit
//!  │         │          │        └ sink::{sqlite,postgres} (rows, documents), in the store transaction
//!  │         │          └ wasm: engine, compile cache, limits, sandboxed WASI, host imports
//!  │         └ pillow: chunks, dedupe, subscriptions, pillow errors, checkpoint policy
//!  └ feed::embedded (SQLite log), feed::kafka
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the host config (`pillowtop.toml`) |
//! | [`manifest`] | plugin manifests (`plugin.toml`) |
//! | [`change`] | decoding feed messages into changes (CommCare `ChangeMeta`) |
//! | [`action`] | what plugins return, in host types |
//! | [`wasm`] | compiling, caching, instantiating and calling components under limits |
//! | [`feed`] | partitioned ordered logs: the embedded SQLite feed, Kafka |
//! | [`file`] | reading user-named files with a size bound |
//! | [`partition`] | which process reads which partitions |
//! | [`checkpoint`] | when checkpoints are saved |
//! | [`errors`] | pillow error records and retry backoff |
//! | [`store`] | the store (SQLite or PostgreSQL): checkpoints, pillow errors, sink tables, one transaction per chunk |
//! | [`sink`] | writing actions: Elasticsearch, and sink tables in SQLite or PostgreSQL; outage classification and backoff |
//! | [`sqlite`] | opening the SQLite files with one set of settings |
//! | [`pillow`] | the run loop |
//! | [`reload`] | hot reload: plugin slots, watching files, staging checked versions |
//! | [`metrics`] | Prometheus metrics |
//! | [`scaffold`] | `pillowtop plugin new`: starter plugins in Rust, Python, JavaScript |
//! | [`admin`] | the admin HTTP endpoint: metrics, status, plugin reloads |
//! | [`fixtures`] | golden fixtures: change in, actions out |
//! | [`status`] | what `pillowtop status` shows |
//! | [`generate`] | synthetic CommCare-like changes |
//! | [`time`] | RFC 3339 timestamps without a date library |

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
pub mod manifest;
pub mod metrics;
pub mod outage;
pub mod partition;
pub mod pillow;
pub mod process;
pub mod reload;
pub mod scaffold;
pub mod sink;
pub mod status;
pub mod store;
pub mod time;
pub mod wasm;
