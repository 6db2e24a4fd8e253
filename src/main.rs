//! The `mcluster` command: a thin layer over the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    mcluster::cli::main()
}
