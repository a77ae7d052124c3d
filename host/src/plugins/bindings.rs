//! The host side of the plugin interface: `bindgen!` over `sdk/wit/`, run once, here.
//!
//! The WIT in `sdk/wit/` is the only copy; a later package version is added beside it and linked
//! here too, so older plugins keep loading. Nothing generated here leaves the `plugins` module.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "trellis:plugin/plugin@0.1.0",
});

pub(crate) use exports::trellis::plugin::mask::MaskRequest;
pub(crate) use trellis::plugin::log::Level;
pub(crate) use trellis::plugin::types::{Description, Kind};
