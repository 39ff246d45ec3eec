//! The `ambit` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    ambit::cli::main()
}
