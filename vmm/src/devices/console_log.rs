//! `--serial file:PATH`: the guest's console in a file that a guest writing without end
//! cannot grow past a few MiB. It rotates as libvirt's virtlogd rotates a guest's
//! console log (its `max_size` and `max_backups` defaults): once the file would pass
//! 2 MiB, `PATH.1` becomes `PATH.2`, `PATH.0` `PATH.1`, `PATH` `PATH.0`, and a new
//! `PATH` is started, the oldest going. Only a path that is itself a regular file is
//! rotated: `file:/dev/null`, a terminal's device or a symlink (`/dev/stdout`) is
//! written to as it is, and never renamed. A file someone else moved away (logrotate)
//! or removed is followed by a new one at `PATH`, renaming nothing.
//!
//! The `kvnet-vmm` binary writes it through a [`LogProcess`], as QEMU's console goes
//! through virtlogd: the VMM, under its syscall filter, opens and renames no file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// Most a console log file holds before it rotates: virtlogd's default `max_size`.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// Rotated files kept beside it: virtlogd's default `max_backups`.
pub const BACKUPS: usize = 3;

/// A console log file, appended to, rotated at [`MAX_FILE_BYTES`].
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    /// The file being written; `None` after a failure, until it is opened again.
    file: Option<File>,
    /// Its device and inode: what `path` must still name to be renamed.
    identity: (u64, u64),
    /// Bytes in the current file.
    written: u64,
    /// Most bytes in one file, for a log that may rotate at all (not one written
    /// through this process's stdout or stderr).
    limit: Option<u64>,
    /// The limit while `path` is a regular file of its own; `None` while it is not (a
    /// device, a FIFO, a symlink such as `/dev/stdout`), which is never rotated.
    max_bytes: Option<u64>,
    /// The log was renamed away: `path` must be made anew, and whatever someone put
    /// there meanwhile (a symlink, a file) is refused until it is gone.
    fresh: bool,
}

/// A console log's file as [`open_for_appending`] opened it.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    /// This process's stdout or stderr, named by a path: written through, and never
    /// rotated (a rename would move the file the shell writes to).
    stdio: bool,
}

/// Opens (or creates, mode 0600 as virtlogd creates them: a console may show secrets)
/// `path` for appending. A path naming this process's stdout or stderr (`/dev/stdout`,
/// `/proc/self/fd/2`, the file either is redirected to) is written through that open
/// file, whose offset the shell's next write shares, where a file opened anew would be
/// written over. A FIFO nobody reads is refused at once (ENXIO) rather than waited for:
/// the VMM's stop signals are not heard yet while it opens its console. With `fresh`,
/// the file must be made anew: what is there already, a symlink or a file someone put
/// where a rotated log was, is refused (EEXIST, ELOOP) and takes none of its output.
pub fn open_for_appending(path: &Path, fresh: bool) -> io::Result<LogFile> {
    if !fresh && let Some(file) = own_stdio_at(path) {
        return Ok(LogFile { file, stdio: true });
    }
    let mut options = OpenOptions::new();
    options.append(true).mode(0o600);
    if fresh {
        options
            .create_new(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    } else {
        options.create(true).custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    // Blocking again: a reader that falls behind slows the writer, it loses nothing.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(blocking))?;
    Ok(LogFile { file, stdio: false })
}

/// A copy of this process's stdout or stderr, if `path` names it.
fn own_stdio_at(path: &Path) -> Option<File> {
    use std::os::fd::AsFd;
    let named = std::fs::metadata(path).ok()?;
    [io::stdout().as_fd(), io::stderr().as_fd()]
        .into_iter()
        .filter_map(|fd| fd.try_clone_to_owned().ok().map(File::from))
        .find(|file| {
            file.metadata()
                .is_ok_and(|open| (open.dev(), open.ino()) == (named.dev(), named.ino()))
        })
}

impl ConsoleLog {
    /// Opens (or creates) `path` for appending; what it holds already counts.
    pub fn open(path: &Path) -> io::Result<ConsoleLog> {
        ConsoleLog::with_limit(path, MAX_FILE_BYTES)
    }

    fn with_limit(path: &Path, max_bytes: u64) -> io::Result<ConsoleLog> {
        ConsoleLog::with_file(path, open_for_appending(path, false)?, max_bytes)
    }

    /// The log at `path`, whose file is open already.
    fn with_file(path: &Path, opened: LogFile, max_bytes: u64) -> io::Result<ConsoleLog> {
        let mut log = ConsoleLog {
            path: path.to_owned(),
            file: None,
            identity: (0, 0),
            written: 0,
            limit: (!opened.stdio).then_some(max_bytes),
            max_bytes: None,
            fresh: false,
        };
        log.take(opened.file)?;
        Ok(log)
    }

    /// Opens `path` as it is now (made anew if it is gone), or, after a rotation, as a
    /// new file only.
    fn reopen(&mut self) -> io::Result<()> {
        let opened = open_for_appending(&self.path, self.fresh)?;
        if opened.stdio {
            self.limit = None;
        }
        self.take(opened.file)?;
        self.fresh = false;
        Ok(())
    }

    /// Writes to `file` from now on; it rotates if `path` is that file, a regular file.
    fn take(&mut self, file: File) -> io::Result<()> {
        let metadata = file.metadata()?;
        self.identity = (metadata.dev(), metadata.ino());
        self.written = metadata.len();
        self.file = Some(file);
        self.max_bytes = self.limit.filter(|_| self.path_is_ours());
        Ok(())
    }

    /// Whether `path` itself is the regular file being written, not a link to it, nor
    /// one put in its place (logrotate's), nor gone.
    fn path_is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|metadata| {
            metadata.is_file() && (metadata.dev(), metadata.ino()) == self.identity
        })
    }

    /// `PATH.N`.
    fn backup(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves the files one place down and starts an empty `PATH`; where someone else
    /// moved or removed the file meanwhile, only starts writing to `PATH` as it is. A
    /// failed rename writes nothing more until one works: the limit holds either way.
    fn rotate(&mut self) -> io::Result<()> {
        if self.path_is_ours() {
            self.file = None;
            let rename = |from: &Path, to: &Path| {
                std::fs::rename(from, to).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("renaming {} to {}: {e}", from.display(), to.display()),
                    )
                })
            };
            for n in (1..BACKUPS).rev() {
                match rename(&self.backup(n - 1), &self.backup(n)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            rename(&self.path, &self.backup(0))?;
            // Where the renamed file was, a new one, not whatever someone put there.
            self.fresh = true;
        }
        self.reopen()
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            self.reopen()?;
        }
        if let Some(max_bytes) = self.max_bytes
            && self.written > 0
            && self.written.saturating_add(buf.len() as u64) > max_bytes
        {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other(format!(
                "{} is not open",
                self.path.display()
            )));
        };
        // A write larger than the room left (the console thread writes what piled up,
        // up to 1 MiB) is cut to it; `write_all` rotates for the rest.
        let room = self.max_bytes.map_or(usize::MAX, |max_bytes| {
            usize::try_from(max_bytes.saturating_sub(self.written))
                .unwrap_or(usize::MAX)
                .max(1)
        });
        let chunk = &buf[..buf.len().min(room)];
        let written = loop {
            match file.write(chunk) {
                // A stdout someone made non-blocking: wait for room, lose nothing.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use std::os::fd::AsFd;
                    let mut ready = [nix::poll::PollFd::new(
                        file.as_fd(),
                        nix::poll::PollFlags::POLLOUT,
                    )];
                    match nix::poll::poll(&mut ready, nix::poll::PollTimeout::NONE) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                other => break other?,
            }
        };
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// The first argument that makes `kvnet-vmm` a console log writer ([`run_writer`]).
pub const WRITER_ARG: &str = "--console-log-writer";
/// After the path: the file handed over is the VMM's stdout or stderr, never rotated.
pub const WRITER_STDIO_ARG: &str = "--stdio";

/// A console log written by a process of its own: the `kvnet-vmm` binary run again with
/// [`WRITER_ARG`], reading what the VMM writes from a pipe into a [`ConsoleLog`]. It
/// ends when the pipe closes, having written everything, even after the VMM was killed;
/// it inherits the VMM's blocked stop signals, so a Ctrl-C for the VMM does not cut the
/// log short.
///
/// It re-runs the current executable, so only `kvnet-vmm` itself (or a program that
/// calls [`run_writer`] for [`WRITER_ARG`] as its `main` does) can use it.
#[derive(Debug)]
pub struct LogProcess {
    input: Option<ChildStdin>,
    process: Child,
}

impl LogProcess {
    /// Starts the writer of `path`. The file is opened here, once, so that one that
    /// cannot be written is refused before the VM starts, and handed to the writer as
    /// its stdout (a FIFO's reader sees one writer from start to end); its stderr is
    /// the VMM's.
    pub fn spawn(path: &Path) -> io::Result<LogProcess> {
        let opened = open_for_appending(path, false)?;
        let mut command = Command::new(std::env::current_exe()?);
        command.arg(WRITER_ARG).arg(path);
        if opened.stdio {
            command.arg(WRITER_STDIO_ARG);
        }
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::from(opened.file))
            .spawn()?;
        Ok(LogProcess {
            input: process.stdin.take(),
            process,
        })
    }
}

impl Write for LogProcess {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.input.as_mut() {
            Some(input) => input.write(buf),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.input.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Drop for LogProcess {
    /// Closes the pipe and waits until the writer has written it all and ended.
    fn drop(&mut self) {
        drop(self.input.take());
        if let Err(error) = self.process.wait() {
            tracing::warn!(%error, "console log writer not waited for");
        }
    }
}

/// The writer process: copies its stdin into the console log at `path`, whose file
/// [`LogProcess::spawn`] opened as its stdout (the VMM's stdout or stderr when
/// `stdio`), until the end of its input, then exits.
pub fn run_writer(path: &Path, stdio: bool) -> std::process::ExitCode {
    use std::os::fd::AsFd;
    let opened = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(|fd| LogFile {
            file: File::from(fd),
            stdio,
        })
        .and_then(|file| ConsoleLog::with_file(path, file, MAX_FILE_BYTES))
        // Its own copy is what it writes to: a file it rotates away must not stay
        // open, and hold its space, until the VM ends.
        .and_then(|log| {
            let null = File::options().write(true).open("/dev/null")?;
            nix::unistd::dup2_stdout(null)?;
            Ok(log)
        });
    let mut log = match opened {
        Ok(log) => log,
        Err(error) => {
            report(path, &error, "");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut input = io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut failing = false;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return std::process::ExitCode::SUCCESS,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                report(path, &error, "");
                return std::process::ExitCode::FAILURE;
            }
        };
        // Once until it works again, as the console thread reports a failing sink.
        match log.write_all(&buf[..n]).and_then(|()| log.flush()) {
            Err(error) if !failing => {
                report(path, &error, "; dropping output until it can be written");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

/// Tells the VMM's stderr about a problem of the log's, if it can: one that is gone (a
/// closed terminal, a pipe with no reader) must not end the writer, as `eprintln!`
/// would, and take the rest of the console with it.
fn report(path: &Path, error: &io::Error, then: &str) {
    let _ = writeln!(
        io::stderr(),
        "kvnet-vmm: console log {}: {error}{then}",
        path.display()
    );
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

    /// `file:/dev/null`, a terminal's device, a FIFO or a symlink (`/dev/stdout`) is
    /// written as it is: renaming `/dev/null` or `/dev/stdout` away would break the host.
    #[test]
    fn what_is_no_regular_file_of_its_own_is_never_rotated() {
        // Links in a directory of their own: a rotation would rename a link there,
        // never /dev/null itself.
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out.log");
        std::fs::write(&out, b"").expect("a regular file");
        for target in [Path::new("/dev/null"), out.as_path()] {
            let path = dir.path().join("console");
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(target, &path).expect("link");
            let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
            log.write_all(&[b'x'; 64]).expect("write");
            let kept = std::fs::symlink_metadata(&path).expect("link");
            assert!(kept.file_type().is_symlink(), "{target:?}");
            assert!(!log.backup(0).exists(), "{target:?}");
        }
        assert_eq!(std::fs::read(&out).expect("read").len(), 64);
    }

    /// A log logrotate moved away, or someone removed, is followed by a new file at
    /// PATH; no file is renamed for it.
    #[test]
    fn a_log_moved_or_removed_by_someone_else_goes_on_at_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
        log.write_all(b"abcd").expect("write");
        // logrotate: the file moved, a new one made in its place.
        std::fs::rename(&path, dir.path().join("console.log.1")).expect("move");
        std::fs::write(&path, b"").expect("logrotate's new file");
        log.write_all(b"efgh").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"efgh");
        assert_eq!(std::fs::read(log.backup(1)).expect("read"), b"abcd");
        assert!(!log.backup(0).exists());
        // Removed: made again.
        std::fs::remove_file(&path).expect("rm");
        log.write_all(b"ijkl").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"ijkl");
        assert!(!log.backup(0).exists());
    }

    /// A symlink put in the log's place (or a file over the limit that is not the log's
    /// own) is written to as it is, in whole writes: not rotated, and not a byte and a
    /// reopen at a time.
    #[test]
    fn a_symlink_put_in_the_logs_place_is_written_through_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"0123456789").expect("over the limit already");
        let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
        log.write_all(b"ab").expect("write");
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        // Past the limit: the log looks at its path again and finds the link.
        log.write_all(b"cdef").expect("write");
        assert_eq!(log.max_bytes, None);
        assert_eq!(log.write(b"ghijkl").expect("write"), 6);
        assert_eq!(
            std::fs::read(&elsewhere).expect("read"),
            b"0123456789cdefghijkl"
        );
        assert!(!log.backup(0).exists());
    }

    /// After a rotation the new file is made where the old one was: a symlink or a file
    /// planted there in between is refused, write after write, until it is gone.
    #[test]
    fn a_symlink_planted_where_the_log_rotated_away_is_not_followed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let target = dir.path().join("target");
        let mut log = ConsoleLog::with_limit(&path, 4).expect("open");
        log.write_all(b"abcd").expect("write");
        // What `rotate` does, with a symlink planted between its rename and its open.
        std::fs::rename(&path, log.backup(0)).expect("rename");
        log.file = None;
        log.fresh = true;
        std::os::unix::fs::symlink(&target, &path).expect("plant");
        for _ in 0..2 {
            assert!(
                log.write_all(b"secret").is_err(),
                "refused, write after write"
            );
        }
        assert!(!target.exists());
        // A file put there is refused too; once it is gone, a new log is made.
        std::fs::remove_file(&path).expect("unplant");
        std::fs::write(&path, b"").expect("plant a file");
        assert!(log.write_all(b"secret").is_err());
        std::fs::remove_file(&path).expect("unplant");
        log.write_all(b"abc").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"abc");
    }

    #[test]
    fn a_new_log_is_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        ConsoleLog::with_limit(&path, 4).expect("open");
        let mode = std::fs::metadata(&path).expect("log").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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
