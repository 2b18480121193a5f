//! Opening the files the daemon reads, and the lease journals it appends to, so that
//! no file can hold it: only regular files are read or written, opened without
//! blocking (a FIFO put in the config or state dir, by mistake or not, would otherwise
//! stop the daemon in `open` or `read` for good), and no more than [`MAX_FILE_BYTES`]
//! is read (a huge or endless file, `/dev/zero` through a symlink, would fill its
//! memory).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Most a file the daemon reads may hold: virsh's limit for XML files, far beyond any
/// definition, status, record or hosts file.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Opens `path` with `options`, without blocking, and checks that it is a regular
/// file, which is then read and written as usual (blocking: a write to it must never
/// come back short with EAGAIN).
pub fn open_regular(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    open_regular_with(options, path, nix::fcntl::OFlag::empty())
}

/// Opens the journal `path` for appending, created root's alone (0600) if missing,
/// never through a symlink: the daemon appends as root, and must not append to a file
/// someone who could write to the directory named.
pub fn open_journal(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let journal = open_regular_with(
        OpenOptions::new().append(true).create(true).mode(0o600),
        path,
        nix::fcntl::OFlag::O_NOFOLLOW,
    )?;
    // One an older kvnetd left readable by all.
    journal.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(journal)
}

/// [`open_regular`] with `flags` added to the open's own.
fn open_regular_with(
    options: &mut OpenOptions,
    path: &Path,
    flags: nix::fcntl::OFlag,
) -> io::Result<File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};

    let file = options
        .custom_flags((OFlag::O_NONBLOCK | flags).bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(
        &file,
        FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
    )?;
    Ok(file)
}

/// Whether `path` is `/dev/null` (or a link to it), which an administrator names to
/// turn a file off (`--hosts-file /dev/null`): it reads as empty, and is no regular file.
pub fn is_dev_null(path: &Path) -> bool {
    let null = Path::new("/dev/null");
    path == null || std::fs::canonicalize(path).is_ok_and(|target| target == null)
}

/// Reads the regular file `path`, of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(OpenOptions::new().read(true), path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_regular`] for a UTF-8 text file of at most [`MAX_FILE_BYTES`].
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path, MAX_FILE_BYTES)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let error = read_regular(&fifo, 10).expect_err("a FIFO is refused, at once");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let appending = open_regular(OpenOptions::new().append(true).create(true), &fifo);
        assert!(
            appending.is_err(),
            "a FIFO with no reader is refused at once"
        );
        assert!(read_regular(dir.path(), 10).is_err(), "a directory");
        assert!(
            read_regular(Path::new("/dev/zero"), 10).is_err(),
            "a device"
        );
        let link = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &link).expect("symlink");
        assert!(is_dev_null(&link) && is_dev_null(Path::new("/dev/null")));
        assert!(!is_dev_null(Path::new("/dev/zero")));

        let appended = dir.path().join("journal");
        std::fs::write(&appended, "").expect("an older journal");
        std::fs::set_permissions(&appended, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let journal = open_journal(&appended).expect("a regular file");
        let mode = journal.metadata().expect("journal").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&appended, &linked).expect("symlink");
        assert!(open_journal(&linked).is_err(), "written through a symlink");
        let flags = nix::fcntl::fcntl(&journal, nix::fcntl::FcntlArg::F_GETFL).expect("flags");
        assert_eq!(
            flags & nix::fcntl::OFlag::O_NONBLOCK.bits(),
            0,
            "left non-blocking"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, b"0123456789").expect("write");
        assert_eq!(
            read_regular(&file, 10).expect("at the limit"),
            b"0123456789"
        );
        let error = read_regular(&file, 9).expect_err("over the limit");
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge);
        std::fs::write(&file, [0xff, 0xfe]).expect("write");
        assert_eq!(
            read_text(&file).expect_err("not UTF-8").kind(),
            io::ErrorKind::InvalidData
        );
    }
}
