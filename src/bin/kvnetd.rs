fn main() -> std::process::ExitCode {
    netd::main()
}
