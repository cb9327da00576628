//! Integration tests: the real host against real compiled Wasm components
//! (built by `make plugins`), real SQLite files, and the real servers `make
//! services` starts (tansu, PostgreSQL, osmem-server). One test binary, so the workspace
//! links once.

mod support;

mod cli;
mod elastic;
mod fullstack;
mod kafka;
mod languages;
mod limits;
mod loading;
mod lookups;
mod observe;
mod pipeline;
mod postgres;
mod recovery;
mod reload;
mod retry;
mod sandbox;
mod shadow;
mod sources;
mod tagged;
mod ucr;
