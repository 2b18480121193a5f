//! Writes a mini-guest ELF (prints one line, then powers off through ACPI) to the path
//! given as the only argument. Used by `bench/vmm_start.sh`.

use vmm::testing::{self, poweroff, print};

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: mini_guest OUTPUT.elf");
        return std::process::ExitCode::from(2);
    };
    let path = std::path::PathBuf::from(path);
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let written = testing::write_guest(dir, name.as_deref().unwrap_or("guest.elf"), |a| {
        print(a, "mini-guest up\n")?;
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
