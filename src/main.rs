//! The `ambit` binary: parses the command line and hands over to the library.

/// mimalloc instead of glibc malloc: the data path allocates its read chunks on one thread and
/// frees them on another (the HTTP/2 connection task), which glibc serves through arena locks;
/// measured in `benches/README.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ambit::cli::main()
}
