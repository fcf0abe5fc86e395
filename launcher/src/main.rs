//! The `ckpt` binary: everything lives in the `launcher` library so tests can call it in-process.

fn main() -> std::process::ExitCode {
    launcher::main()
}
