//! jemalloc rather than glibc's malloc for Ferry's long-running daemons.
//!
//! glibc keeps an arena per thread and hands little back: the agent's first
//! sync made many small objects at once (issue 13: RSS 94 MiB with glibc,
//! under 64 MiB with jemalloc), and the apiserver runs each controller on a
//! thread of its own, each with its own glibc arena. [`jemalloc!`] installs
//! jemalloc with one arena for every thread (a daemon's threads are few and
//! rarely allocate at once; each keeps a small cache of its own), and freed
//! pages handed back to the kernel a second after they go unused, by
//! jemalloc's own thread, rather than kept for reuse.

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's settings, as its `malloc_conf` string.
pub const MALLOC_CONF: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Makes jemalloc, with [`MALLOC_CONF`], the allocator of the binary it is
/// invoked in, once, at the binary crate's root. The settings are a symbol
/// jemalloc reads before `main` (the crate prefixes jemalloc's names with
/// `_rjem_`); it must be defined in the binary itself, where the linker
/// cannot drop it.
#[macro_export]
macro_rules! jemalloc {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static malloc_conf: &[u8; 70] = $crate::allocator::MALLOC_CONF;
    };
}

#[cfg(test)]
mod tests {
    crate::jemalloc!();

    /// jemalloc found the settings under the name it reads them from (a
    /// wrong name is silently ignored).
    #[test]
    fn jemalloc_runs_with_the_settings() {
        assert_eq!(
            tikv_jemalloc_ctl::opt::narenas::read().expect("jemalloc"),
            1
        );
        assert!(tikv_jemalloc_ctl::opt::background_thread::read().expect("jemalloc"));
    }
}
