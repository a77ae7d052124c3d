//! Test-only node plugin `stamp`, version 2.0.0: the same source as `test-stamp`.

include!("../../test-stamp/src/stamp.rs");
