//! Helpers for writing a pillowtop processor in Rust.
//!
//! A processor is a struct and two methods:
//!
//! ```text
//! use pillowtop_sdk::{Guest, export, types::*};
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn init(_config: String) -> Result<PluginInfo, String> {
//!         Ok(PluginInfo { tables: vec![], indices: vec![IndexSpec { name: "echo".into(), mappings: "{}".into(), aliases: vec![] }] })
//!     }
//!     fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
//!         let Some(document) = change.document else { return Ok(vec![]) };
//!         Ok(vec![Action::IndexDocument(IndexDocument { index: "echo".into(), id: change.id, document })])
//!     }
//! }
//!
//! export!(Echo);
//! ```
//!
//! The bindings exist only when compiling for `wasm32` (the component
//! target, `wasm32-wasip2`); [`json`], [`python`] and [`time`] are plain Rust and also compile
//! natively, so a plugin's transform can be unit-tested and benchmarked
//! outside Wasm.

#![warn(missing_docs)]

pub mod json;
pub mod python;
pub mod time;
// Not public: it only supplies the guest's `memcmp` symbol.
mod mem;

/// The generated bindings of `wit/processor.wit`.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "processor",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "pillowtop_sdk::bindings",
    });
}

#[cfg(target_arch = "wasm32")]
pub use bindings::{Guest, export, pillowtop::processor::host, pillowtop::processor::types};

/// Log a message through the host (rate-limited, tagged with the plugin).
#[cfg(target_arch = "wasm32")]
pub fn log(level: host::Level, message: &str) {
    host::log(level, message);
}
