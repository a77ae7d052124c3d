//! Test-only node plugin `echo`: returns each record's text unchanged, without parsing it. The
//! benchmarks use it to measure what the runtime itself costs per record (copying strings in and
//! out, instantiation, the host's output checks), apart from a plugin's own JSON work.

use trellis_sdk::{__Description, __MaskGuest, __MaskRequest, __MetaGuest, __TransformGuest};

struct Echo;

impl __MetaGuest for Echo {
    fn describe() -> __Description {
        trellis_sdk::__describe(
            trellis_sdk::Info::new("echo", env!("CARGO_PKG_VERSION")),
            trellis_sdk::PluginKind::Node,
        )
    }
}

impl __TransformGuest for Echo {
    fn transform(records: Vec<String>) -> Vec<Result<String, String>> {
        records.into_iter().map(Ok).collect()
    }
}

impl __MaskGuest for Echo {
    fn mask(requests: Vec<__MaskRequest>) -> Vec<Result<String, String>> {
        requests
            .iter()
            .map(|_| Err("`echo` is not a masking plugin".to_owned()))
            .collect()
    }
}

trellis_sdk::bindings::__export_plugin_world!(Echo);
