//! The `imgstore` command-line tool.
//!
//! A VM manager may run `imgstore config` on every boot, so start-up is part of the boot path.
//! The tool therefore starts at the C `main` (`#![no_main]`) instead of Rust's runtime start,
//! which would also install a stack-overflow handler: to find the main thread's stack it has
//! glibc read and `sscanf` all of `/proc/self/maps`, about a sixth of a cached `config`'s CPU
//! (`perf record` in docs/design.md §10). A stack overflow still ends the process (SIGSEGV), only
//! without Rust's message. What the runtime does that the tool relies on is done here:
//! descriptors 0–2 are kept open (on `/dev/null` if a caller closed one, so no file the tool
//! opens becomes its output), SIGPIPE is ignored (a closed pipe is an error to handle:
//! `imgstore list | head` ends quietly), a panic exits with 101 after its message, and standard
//! output is flushed before the process ends.
// The unit tests of `cli` run under the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

// Under the unit-test harness nothing calls `cli::main`, so most of `cli` looks unused there.
#[cfg_attr(test, allow(dead_code))]
mod cli;

// Rust's standard library unwinds through libgcc_s, which glibc would load at start-up; its
// constructor probes the CPU with a dozen `cpuid`s, each a VM exit on a virtual machine
// (~4 µs here). The static unwinder from the same GCC serves the same calls without that.
// SAFETY: the block declares nothing; it only names a library to link.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
#[link(name = "gcc_eh", kind = "static")]
unsafe extern "C" {}

/// The start of the process (not under the unit-test harness, which brings its own `main`).
#[cfg(not(test))]
mod start {
    use std::ffi::{c_char, c_int};
    use std::io::Write;
    use std::os::fd::BorrowedFd;
    use std::process::ExitCode;

    /// The process entry point, called by the C runtime with the arguments (which the standard
    /// library has already captured for `std::env::args`).
    // SAFETY: exactly one `main` symbol exists in the binary: `#![no_main]` keeps Rust's runtime
    // from emitting its own.
    #[allow(unsafe_code)]
    #[unsafe(no_mangle)]
    extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
        keep_standard_descriptors_open();
        ignore_sigpipe();
        let code = std::panic::catch_unwind(super::cli::main).map_or(101, exit_status);
        let _ = std::io::stdout().flush();
        code
    }

    /// The status an [`ExitCode`] stands for (the CLI uses 0, 1 and 2).
    fn exit_status(code: ExitCode) -> c_int {
        (0u8..=2)
            .find(|&n| ExitCode::from(n) == code)
            .map_or(1, c_int::from)
    }

    /// Open `/dev/null` on each of descriptors 0, 1 and 2 that is closed, lowest first (an
    /// `open` takes the lowest free number), as Rust's runtime start does.
    fn keep_standard_descriptors_open() {
        for fd in 0..=2 {
            // SAFETY: only asks whether the descriptor is open; nothing is read or closed.
            #[allow(unsafe_code)]
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF)
            {
                // Leaked on purpose: it is the descriptor's new occupant for the whole process.
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(std::os::fd::IntoRawFd::into_raw_fd);
            }
        }
    }

    /// Writing to a closed pipe returns `EPIPE` instead of killing the process.
    fn ignore_sigpipe() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: `SigIgn` installs no handler code; it is set before any other thread exists.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    }
}
