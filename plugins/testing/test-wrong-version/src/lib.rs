//! Test-only plugin `wrong-version`: a well-behaved node plugin built against
//! `trellis:plugin@0.9.0`, an interface version this host does not provide. Loading it must fail
//! and name the missing import.

wit_bindgen::generate!({
    path: "wit",
    world: "trellis:plugin/plugin@0.9.0",
});

use exports::trellis::plugin::mask::{Guest as MaskGuest, MaskRequest};
use exports::trellis::plugin::meta::Guest as MetaGuest;
use exports::trellis::plugin::transform::Guest as TransformGuest;
use trellis::plugin::types::{Description, Kind};

struct WrongVersion;

impl MetaGuest for WrongVersion {
    fn describe() -> Description {
        Description {
            name: "wrong-version".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: Kind::Node,
            capabilities: Vec::new(),
            config_schema: None,
        }
    }
}

impl TransformGuest for WrongVersion {
    fn transform(records: Vec<String>) -> Vec<Result<String, String>> {
        records.into_iter().map(Ok).collect()
    }
}

impl MaskGuest for WrongVersion {
    fn mask(requests: Vec<MaskRequest>) -> Vec<Result<String, String>> {
        requests.into_iter().map(|r| Ok(r.value)).collect()
    }
}

export!(WrongVersion);
