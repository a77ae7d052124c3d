//! Test-only node plugin `stamp`: adds `served_by` (its own version) to each record. Two builds
//! with different versions (`test-stamp` 1.0.0, `test-stamp-next` 2.0.0) of `stamp.rs` are
//! swapped under load.

include!("stamp.rs");
