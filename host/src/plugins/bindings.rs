//! The host side of the plugin interface: `bindgen!` over each released WIT package version, run
//! once, here.
//!
//! - [`v1`]: `trellis:plugin@0.1.0` (`sdk/wit-0.1.0/`). Calls are synchronous, as they always
//!   were, so components built for it run exactly as before.
//! - [`v2`]: `trellis:plugin@0.2.0` (`sdk/wit/`), which adds the `database` import. Its calls are
//!   async (`call_async`): a plugin waiting on the database suspends its fiber and frees the
//!   tokio worker.
//!
//! Each version's generated types stay in its module; `plugin.rs` converts them to the host's
//! own. Nothing generated here leaves the `plugins` module.

/// `trellis:plugin@0.1.0`.
pub(crate) mod v1 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit-0.1.0",
        world: "trellis:plugin/plugin@0.1.0",
    });

    pub(crate) use exports::trellis::plugin::mask::MaskRequest;
    pub(crate) use trellis::plugin::log::Level;
    pub(crate) use trellis::plugin::types::{Description, Kind};
}

/// `trellis:plugin@0.2.0`.
pub(crate) mod v2 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "trellis:plugin/plugin@0.2.0",
        imports: {
            "trellis:plugin/database.query": async,
        },
        exports: { default: async },
    });

    pub(crate) use exports::trellis::plugin::mask::MaskRequest;
    pub(crate) use trellis::plugin::database::{Error as DatabaseError, ErrorKind};
    pub(crate) use trellis::plugin::log::Level;
    pub(crate) use trellis::plugin::types::{Description, Kind};
}
