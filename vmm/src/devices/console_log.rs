//! `--serial file:PATH`: the guest's console in a file that a guest writing without end
//! cannot grow past a few MiB. It rotates as libvirt's virtlogd rotates a guest's
//! console log (its `max_size` and `max_backups` defaults): once the file would pass
//! 2 MiB, `PATH.1` becomes `PATH.2`, `PATH.0` `PATH.1`, `PATH` `PATH.0`, and a new
//! `PATH` is started, the oldest going. Only a regular file is rotated: `file:/dev/null`
//! or a terminal's device is written to as it is, and never renamed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Most a console log file holds before it rotates: virtlogd's default `max_size`.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// Rotated files kept beside it: virtlogd's default `max_backups`.
pub const BACKUPS: usize = 3;

/// A console log file, appended to, rotated at [`MAX_FILE_BYTES`].
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the current file.
    written: u64,
    /// Most bytes in one file; `None` for what is no regular file (a device, a FIFO),
    /// which is never rotated.
    max_bytes: Option<u64>,
}

impl ConsoleLog {
    /// Opens (or creates) `path` for appending; what it holds already counts.
    pub fn open(path: &Path) -> io::Result<ConsoleLog> {
        ConsoleLog::with_limit(path, MAX_FILE_BYTES)
    }

    fn with_limit(path: &Path, max_bytes: u64) -> io::Result<ConsoleLog> {
        let file = append_to(path)?;
        let metadata = file.metadata()?;
        Ok(ConsoleLog {
            path: path.to_owned(),
            file: Some(file),
            written: metadata.len(),
            max_bytes: metadata.is_file().then_some(max_bytes),
        })
    }

    /// `PATH.N`.
    fn backup(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves the files one place down and starts an empty `PATH`. On failure the file is
    /// closed, and nothing more is written (nor rotated again, which would push the
    /// backups out one by one): the limit holds either way.
    fn rotate(&mut self) -> io::Result<()> {
        if self.file.take().is_none() {
            return Err(self.stopped());
        }
        for n in (1..BACKUPS).rev() {
            match std::fs::rename(self.backup(n - 1), self.backup(n)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.backup(0))?;
        self.file = Some(append_to(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl ConsoleLog {
    fn stopped(&self) -> io::Error {
        io::Error::other(format!("{} could not be rotated", self.path.display()))
    }
}

fn append_to(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(max_bytes) = self.max_bytes else {
            return match self.file.as_mut() {
                Some(file) => file.write(buf),
                None => Err(self.stopped()),
            };
        };
        if self.written > 0 && self.written.saturating_add(buf.len() as u64) > max_bytes {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(self.stopped());
        };
        // A write larger than the room left (the console thread writes what piled up,
        // up to 1 MiB) is cut to it; `write_all` rotates for the rest.
        let room = usize::try_from(max_bytes.saturating_sub(self.written))
            .unwrap_or(usize::MAX)
            .max(1);
        let written = file.write(&buf[..buf.len().min(room)])?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_limit_and_keeps_three_backups() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"1234\n").expect("an earlier run's");
        let mut log = ConsoleLog::with_limit(&path, 10).expect("open");
        for line in [
            "0123", "abcd", "efgh", "ijkl", "mnop", "qrst", "uvwx", "yz01",
        ] {
            for byte in line.bytes().chain(*b"\n") {
                log.write_all(&[byte]).expect("write");
            }
        }
        log.flush().expect("flush");
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(read(&path), "yz01\n");
        assert_eq!(read(&log.backup(0)), "qrst\nuvwx\n");
        assert_eq!(read(&log.backup(1)), "ijkl\nmnop\n");
        // The oldest, with the earlier run's line, went.
        assert_eq!(read(&log.backup(2)), "abcd\nefgh\n");
        assert!(!log.backup(3).exists());
    }

    /// `file:/dev/null`, a terminal's device or a FIFO is written as it is: renaming
    /// `/dev/null` away would break the host.
    #[test]
    fn what_is_no_regular_file_is_never_rotated() {
        // Through a link in a directory of its own: a rotation would rename the link
        // there, never /dev/null itself.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console");
        std::os::unix::fs::symlink("/dev/null", &path).expect("link");
        let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
        log.write_all(&[b'x'; 64]).expect("write");
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert!(!log.backup(0).exists());
    }

    #[test]
    fn a_log_that_cannot_rotate_stops_growing() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
        log.write_all(b"abcd").expect("write");
        // A directory that is not empty in PATH.2's place: moving PATH.1 there fails.
        std::fs::write(log.backup(1), b"older").expect("a backup");
        std::fs::create_dir(log.backup(2)).expect("dir");
        std::fs::write(log.backup(2).join("x"), b"").expect("not empty");
        assert!(log.write_all(b"e").is_err());
        assert!(log.write_all(b"f").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"abcd");
    }
}
