//! Integration tests: the real host against real compiled Wasm components
//! (built by `make plugins`) and real SQLite files. One test binary, so the
//! workspace links once.

mod support;

mod cli;
mod kafka;
mod languages;
mod loading;
mod pipeline;
mod reload;
mod sandbox;
