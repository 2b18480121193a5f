fn main() -> std::process::ExitCode {
    vmm::main()
}
