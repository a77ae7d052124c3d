//! The one wasmtime engine every plugin runs on, its linker, and the epoch ticker.
//!
//! - **Pooling allocator.** Instance slots, memories and tables are reserved once and reused, so
//!   a new instance per call costs a few microseconds (see `BENCHMARKS.md`).
//! - **Epoch interruption.** A ticker thread advances the epoch every `tick`; a call's store gets
//!   a deadline in ticks, and traps when it passes. The ticker belongs to the engine: it stops
//!   when [`PluginEngine::shutdown`] is called (the server's shutdown path does) or when the last
//!   handle to the engine is dropped.
//! - **Two linkers, one per interface version.** Components built for `trellis:plugin@0.1.0`
//!   are called synchronously on the calling thread (async callers use the `*_async` forms, which
//!   run on tokio's blocking pool), through a linker with WASI's synchronous bindings, exactly as
//!   before 0.2.0 existed. Components built for `@0.2.0` can call the async `database` import,
//!   so they are called with `call_async` on a fiber, through a second linker with WASI's async
//!   bindings: a plugin waiting on the database suspends and frees the tokio worker, and a
//!   computing plugin yields to the executor every epoch tick until its deadline.
//! - **`concurrency_support` off.** The WIT has no `async func`; `component-model-async` is not
//!   compiled in by default. `BENCHMARKS.md` has the figures with it on and off (the
//!   `wasm-concurrency` cargo feature compiles it in for that comparison).
//! - **No fuel.** Deadlines come from epochs, which cost far less per instruction.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::cache::ComponentCache;
use super::host::CallState;

/// The default epoch tick.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How often the epoch advances; deadlines are counted in ticks.
    pub tick: Duration,
    /// The largest memory any plugin may be given (the pool reserves slots this big).
    pub max_memory_bytes: usize,
    /// How many plugin instances may be alive at once (calls in flight, across plugins).
    pub max_instances: u32,
    /// Where precompiled components are kept; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Turn wasmtime's `concurrency_support` on (only takes effect with the `wasm-concurrency`
    /// feature; used to measure its cost).
    pub concurrency_support: bool,
    /// Write `/tmp/perf-PID.map` as components are compiled, so that `perf report` names the
    /// plugins' own functions instead of `[JIT]` addresses (for profiling; off in `serve`).
    pub perf_map: bool,
    /// Address space reserved per memory slot, when not wasmtime's default (4 GiB on 64-bit,
    /// which lets compiled code skip bounds checks). Smaller means explicit bounds checks; it is
    /// for running the benchmarks under valgrind, which cannot map 4 GiB per instance. Must be
    /// at least `max_memory_bytes`.
    pub memory_reservation: Option<u64>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tick: DEFAULT_TICK,
            max_memory_bytes: 256 * 1024 * 1024,
            max_instances: 128,
            cache_dir: None,
            concurrency_support: false,
            perf_map: false,
            memory_reservation: None,
        }
    }
}

/// Why the engine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot set up the WebAssembly engine: {reason}")]
    Config {
        /// wasmtime's reason.
        reason: String,
    },
    /// The ticker thread could not be started.
    #[error("cannot start the plugin epoch ticker")]
    Ticker(#[source] std::io::Error),
}

/// The engine, the linker with the host imports, the component cache and the ticker. Cheap to
/// clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<EngineInner>,
}

/// How much of a plugin's linear memory a reused slot keeps resident between calls when the
/// kernel can report which pages a call dirtied (see [`PluginEngine::new`]). Bounded per slot, so
/// the most the host keeps is this times the slots in use at the busiest moment.
const KEEP_RESIDENT_WITH_PAGEMAP: usize = 1 << 20;

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    /// `trellis:plugin@0.1.0`, synchronous.
    pub(crate) linker: Linker<CallState>,
    /// `trellis:plugin@0.2.0`, async.
    pub(crate) linker_v2: Linker<CallState>,
    pub(crate) tick: Duration,
    pub(crate) cache: Option<ComponentCache>,
    ticker: Mutex<Option<EpochTicker>>,
}

impl PluginEngine {
    /// Creates the engine and starts its ticker.
    pub fn new(options: EngineOptions) -> Result<PluginEngine, EngineError> {
        let config_error = |e: wasmtime::Error| EngineError::Config {
            reason: format!("{e:#}"),
        };
        let pagemap_scan = PoolingAllocationConfig::is_pagemap_scan_available();
        tracing::debug!(
            pagemap_scan,
            "plugin slots are reset {}",
            if pagemap_scan {
                "in place (dirty pages found with PAGEMAP_SCAN)"
            } else {
                "with madvise (PAGEMAP_SCAN is not available on this kernel)"
            }
        );
        let mut pool = PoolingAllocationConfig::new();
        // A Rust component has a handful of core instances (the module and its shims), a Python
        // one 14, and each one memory. Each memory slot reserves address space (not memory) for its largest size plus
        // guard pages, so the memory count is kept to one per instance.
        pool.total_component_instances(options.max_instances)
            // A Python component (componentize-py) has 14 core instances, a Rust one a handful.
            .total_core_instances(options.max_instances.saturating_mul(16))
            .total_memories(options.max_instances)
            .total_tables(options.max_instances.saturating_mul(8))
            .total_stacks(options.max_instances)
            .max_memory_size(options.max_memory_bytes)
            // Reset a reused slot in place instead of handing its pages back to the kernel: the
            // PAGEMAP_SCAN ioctl (Linux 6.7+) finds the pages the last call dirtied and only
            // those are restored with memset, up to the amounts below. A plugin that touched
            // less than that is reset with no `madvise` at all, so no page faults on the next
            // call and no cross-core TLB flush; whatever a call dirtied beyond them (a
            // memory-hungry plugin) is still returned to the kernel, so at most this much
            // stays resident per slot. Without the ioctl (older kernels) Wasmtime memsets
            // the lowest addresses instead, which for a 1 MiB memory cost more than it saved
            // on the HTTP benchmark, so the memory amount is then dropped to zero.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(if pagemap_scan {
                KEEP_RESIDENT_WITH_PAGEMAP
            } else {
                0
            })
            .table_keep_resident(1 << 16);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .wasm_component_model(true);
        if let Some(bytes) = options.memory_reservation {
            config.memory_reservation(bytes);
        }
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if cfg!(feature = "wasm-concurrency") {
            config.concurrency_support(options.concurrency_support);
        }
        let engine = Engine::new(&config).map_err(config_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(config_error)?;
        super::host::clock::add_to_linker(&mut linker).map_err(config_error)?;
        bindings::v1::Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(config_error)?;
        let mut linker_v2 = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker_v2).map_err(config_error)?;
        super::host::clock::add_to_linker(&mut linker_v2).map_err(config_error)?;
        bindings::v2::Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker_v2, |s| s)
            .map_err(config_error)?;
        let cache = options
            .cache_dir
            .map(|dir| ComponentCache::new(dir, compatibility_hash(&engine)));
        let ticker =
            EpochTicker::start(engine.clone(), options.tick).map_err(EngineError::Ticker)?;
        Ok(PluginEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                linker_v2,
                tick: options.tick,
                cache,
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    /// The epoch tick.
    pub fn tick(&self) -> Duration {
        self.inner.tick
    }

    /// Stops the epoch ticker and waits for its thread. Calls made afterwards have no deadline:
    /// call this when the host stops, after the last request.
    pub fn shutdown(&self) {
        let ticker = self
            .inner
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(ticker) = ticker {
            ticker.stop();
        }
    }

    pub(crate) fn inner(&self) -> &EngineInner {
        &self.inner
    }
}

/// A hex digest of the engine's precompile compatibility hash: two engines that may share
/// precompiled code have the same one.
fn compatibility_hash(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..8])
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The thread that advances the engine's epoch every tick until stopped.
struct EpochTicker {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("trellis-epoch".into())
            .spawn(move || {
                // A message or a dropped sender both mean stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        if let Some(ticker) = self
            .ticker
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            ticker.stop();
        }
    }
}
