//! Writes a mini-guest ELF (prints one line, then powers off through ACPI) to the path
//! given as argument. With `--wait`, it powers off only once its console has input (a
//! line on the VMM's stdin). Used by `bench/vmm_start.sh` and `scripts/demo.sh`.

use vmm::testing::{self, poweroff, print, wait_for_input};

fn main() -> std::process::ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let wait = args.first().is_some_and(|arg| arg == "--wait");
    if wait {
        args.remove(0);
    }
    // An option it does not know (`--help`) is no output path.
    let path = match args.as_slice() {
        [path] if !path.to_string_lossy().starts_with('-') => path,
        _ => {
            eprintln!("usage: mini_guest [--wait] OUTPUT.elf");
            return std::process::ExitCode::from(2);
        }
    };
    let path = std::path::PathBuf::from(path);
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let written = testing::write_guest(dir, name.as_deref().unwrap_or("guest.elf"), |a| {
        print(a, "mini-guest up\n")?;
        if wait {
            wait_for_input(a)?;
            print(a, "mini-guest: input read, powering off\n")?;
        }
        poweroff(a)
    });
    match written {
        Ok(p) => {
            println!("{}", p.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mini_guest: cannot write {}: {e}", path.display());
            std::process::ExitCode::FAILURE
        }
    }
}
