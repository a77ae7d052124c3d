//! Test-only node plugin `malformed`: `transform` breaks the interface's contract. With config
//! `{"mode": "count"}` it returns one result more than it was given; otherwise each result is
//! text that is not JSON. It uses the raw bindings, because the SDK would not let it.

use trellis_sdk::bindings::trellis::plugin::config;
use trellis_sdk::{__Description, __MaskGuest, __MaskRequest, __MetaGuest, __TransformGuest};

struct Malformed;

impl __MetaGuest for Malformed {
    fn describe() -> __Description {
        trellis_sdk::__describe(
            trellis_sdk::Info::new("malformed", env!("CARGO_PKG_VERSION")),
            trellis_sdk::PluginKind::Node,
        )
    }
}

impl __TransformGuest for Malformed {
    fn transform(records: Vec<String>) -> Vec<Result<String, String>> {
        if config::get("mode").as_deref() == Some("\"count\"") {
            return (0..=records.len()).map(|_| Ok("{}".to_owned())).collect();
        }
        records.iter().map(|_| Ok("{not json".to_owned())).collect()
    }
}

impl __MaskGuest for Malformed {
    fn mask(requests: Vec<__MaskRequest>) -> Vec<Result<String, String>> {
        requests
            .iter()
            .map(|_| Err("not a masking plugin".to_owned()))
            .collect()
    }
}

trellis_sdk::bindings::__export_plugin_world!(Malformed);
