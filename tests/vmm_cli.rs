//! The `kvnet-vmm` command line: every bad input ends with a clear message and status 1,
//! before (or without) touching the guest.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(args)
        .output()
        .expect("run kvnet-vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file that looks like a 64-bit-capable bzImage whose header asks for `init_size`.
fn fake_bzimage(dir: &std::path::Path, init_size: u32) -> std::path::PathBuf {
    let mut image = vec![0u8; 0x1000];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    let path = dir.join("fake-bzImage");
    std::fs::write(&path, image).expect("write");
    path
}

#[test]
fn missing_kernel_is_named() {
    let (code, err) = run(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("kernel image /nonexistent/vmlinuz does not exist"),
        "{err}"
    );
}

#[test]
fn unrecognised_kernel_is_named() {
    // The image is inspected after /dev/kvm is opened.
    if !testkit::require(&[testkit::Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("junk");
    std::fs::write(&path, vec![0x42u8; 4096]).expect("write");
    let (code, err) = run(&["--kernel", path.to_str().expect("utf8")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a recognised image"), "{err}");
    assert!(err.contains("junk"), "names the file: {err}");
}

#[test]
fn memory_too_small_for_init_size_is_explained() {
    // The image is inspected after /dev/kvm is opened.
    if !testkit::require(&[testkit::Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x0380_0000);
    let (code, err) = run(&["--kernel", kernel.to_str().expect("utf8"), "--memory", "32"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("32 MiB of memory is too small") && err.contains("needs 57 MiB"),
        "{err}"
    );
    assert!(err.contains("0x3800000"), "names init_size: {err}");
}

#[test]
fn too_many_vcpus_and_bad_values_are_rejected() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let k = kernel.to_str().expect("utf8");
    let (code, err) = run(&["--kernel", k, "--vcpus", "1000"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--vcpus 1000 is too many"), "{err}");
    let (code, err) = run(&["--kernel", k, "--serial", "tcp:1234"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid --serial \"tcp:1234\""), "{err}");
    let (code, err) = run(&["--kernel", k, "--memory", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--memory 2 MiB is out of range"), "{err}");
    // clap's own usage errors exit with 2.
    let (code, err) = run(&["--memory", "64"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--kernel"), "{err}");
}
