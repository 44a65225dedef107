//! The `switchyard` binary: the command line of [`switchyard::cli`].

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
