//! The binary's global allocator: mimalloc, asked for plain memory whenever plain memory is
//! aligned enough.
//!
//! The `mimalloc` crate's `GlobalAlloc` hands every request's alignment to
//! `mi_malloc_aligned`, whose checks and out-of-line calls cost more than the allocation itself
//! (about 26 k of a pipeline run's 92 k allocation instructions). Almost every Rust layout asks
//! for a machine word or less, and every block mimalloc hands out is aligned to a word (its
//! size classes are whole words, as C's `malloc` must be for any type that fits). So such a
//! request goes to `mi_malloc`, `mi_zalloc` or `mi_realloc`; a larger alignment still goes
//! through the crate.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;

/// The alignment every block from `mi_malloc` has.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, called without an alignment when a word's suffices. Used by the `trellis` binary
/// and the benches (`#[global_allocator]`).
pub struct Allocator;

// SAFETY: each method returns memory from mimalloc that satisfies `layout`: a block from
// `mi_malloc`, `mi_zalloc` or `mi_realloc` is aligned to a word, and a larger alignment goes to
// the `mimalloc` crate's aligned calls. `mi_free` frees a block from either.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `layout.size()` is not zero (`GlobalAlloc::alloc`'s contract).
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: as in `alloc`.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` came from this allocator with `layout`; the new block keeps a word's
            // alignment.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment up to a page, over sizes around each size class's edges: each block is
    /// aligned, zeroed when asked, keeps its bytes through `realloc`, and frees.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=80).chain([127, 128, 129, 1023, 1024, 1025, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc: size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed: size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
