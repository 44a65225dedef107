//! The `switchyard` binary: the command line of [`switchyard::cli`].

// Every request allocates its state, its headers and its buffers and frees them at its end;
// mimalloc's per-thread free lists serve all those sizes in a few dozen instructions, where the
// system allocator takes its slow path for blocks past a kilobyte. Set here only: an
// application that embeds the library keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
