//! libvirt's network hook scripts. kvnetd runs `<config>/hooks/network`, then every
//! executable in `<config>/hooks/network.d/` in name order, where libvirt runs
//! `/etc/libvirt/hooks/network` and `network.d/`, with libvirt's arguments
//! (`NETWORK OPERATION PHASE -`) and input (a `<hookData>` element holding the network's
//! XML, and the port's for port operations, on stdin), so a libvirt host's scripts can be
//! copied in as they are. A script's failure fails `start`, `started`, `port-created`
//! and `updated` as it fails them in libvirt; `stopped` and `port-deleted` only log it.
//!
//! Scripts run in a clean environment (libvirt's: `LC_ALL=C`, and `PATH`, `HOME`, `USER`,
//! `LOGNAME`, `TMPDIR`, `LD_PRELOAD`, `LD_LIBRARY_PATH` passed on), with stdout discarded,
//! in a process group of their own, which is killed when a script runs longer than
//! [`HOOK_TIMEOUT`]; the scripts after a killed one are not started. The daemon holds
//! its lock while hooks run (libvirt holds the network's), and one stuck script must not
//! hold up every network for good.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// How long one script may run before its process group is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a script's stderr an error message quotes.
const STDERR_LIMIT: usize = 4096;
/// How long the end of stderr is waited for once a script has exited: a process it left
/// running may hold the pipe.
const STDERR_GRACE: Duration = Duration::from_millis(100);
/// The environment libvirt's `virCommandAddEnvPassCommon` passes on.
const PASSED_ENV: [&str; 7] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
];

/// A point in a network's life where the scripts run, as libvirt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Before a start changes anything; a failure cancels the start.
    Start,
    /// Once the network runs; a failure stops it again.
    Started,
    /// After the network stopped.
    Stopped,
    /// A port was created; a failure deletes it.
    PortCreated,
    /// A port ended: deleted, or its guest gone.
    PortDeleted,
    /// `net-update` changed the network; a failure is reported, the change stays.
    Updated,
}

impl Operation {
    /// The script's second argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Started => "started",
            Operation::Stopped => "stopped",
            Operation::PortCreated => "port-created",
            Operation::PortDeleted => "port-deleted",
            Operation::Updated => "updated",
        }
    }

    /// The script's third argument: libvirt calls `stopped` at the end of its step,
    /// everything else at the beginning.
    fn phase(self) -> &'static str {
        match self {
            Operation::Stopped => "end",
            _ => "begin",
        }
    }
}

/// Why a hook failed. The messages start as libvirt's `VIR_ERR_HOOK_SCRIPT_FAILED`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script exited unsuccessfully.
    #[error(
        "Hook script execution failed: internal error: Child process ({command}) unexpected {status}{}",
        stderr_suffix(stderr)
    )]
    Failed {
        /// The command line.
        command: String,
        /// "exit status N" or "fatal signal N", as libvirt words it.
        status: String,
        /// The start of what the script wrote to stderr.
        stderr: String,
    },
    /// The script could not be started.
    #[error("Hook script execution failed: cannot run {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The script's exit could not be waited for.
    #[error("Hook script execution failed: lost track of {command}")]
    Wait {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The script ran too long and was killed with its process group.
    #[error(
        "Hook script execution failed: {command} did not finish within {timeout:?} and was killed"
    )]
    TimedOut {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// A script before this one was killed for running too long: this one was not started.
    #[error(
        "Hook script execution failed: {command} was not run: a script before it was killed for running too long"
    )]
    NotRun {
        /// The command line.
        command: String,
    },
    /// The scripts directory could not be read (no script ran: this is the host's
    /// failure, not a hook's, in libvirt's words for it: a system error).
    #[error("cannot open directory '{}': {}", dir.display(), crate::virsh::system_message(cause))]
    List {
        /// `<config>/hooks/network.d`.
        dir: PathBuf,
        /// Why; in the message, as libvirt puts the C library's text there.
        cause: io::Error,
    },
}

impl Error {
    /// Whether a script was killed for running too long (or not run after one was): the
    /// caller should not start more scripts while it holds its lock.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut { .. } | Error::NotRun { .. })
    }
}

fn stderr_suffix(stderr: &str) -> String {
    match stderr.trim_end() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

/// The network hook scripts of one config dir.
#[derive(Debug)]
pub struct Hooks {
    /// `<config>/hooks/network`.
    script: PathBuf,
    /// `<config>/hooks/network.d`.
    dir: PathBuf,
    /// The files warned about once, with what about: those of `network.d` that are
    /// not executable (and skipped), and scripts others than root may change (run all
    /// the same, as libvirt runs them).
    warned: std::sync::Mutex<HashSet<(PathBuf, Warning)>>,
}

/// What a hook script was warned about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Warning {
    NotExecutable,
    ChangeableByOthers,
}

impl Hooks {
    /// The scripts under `hooks_dir` (`<config>/hooks`). They are looked up at every
    /// call, so a script installed or removed takes effect without a restart.
    pub fn new(hooks_dir: &Path) -> Hooks {
        Hooks {
            script: hooks_dir.join("network"),
            dir: hooks_dir.join("network.d"),
            warned: std::sync::Mutex::default(),
        }
    }

    /// The scripts to run, in order: `network` if it is executable, then the executables
    /// of `network.d` by name (byte order, as libvirt's `strcmp`). A file that is there
    /// but not executable is skipped, with a warning the first time, as libvirt warns once
    /// when it starts. Without scripts
    /// this costs a `stat` and an `opendir`, so callers ask before building the input.
    pub fn scripts(&self) -> Result<Vec<PathBuf>, Error> {
        let mut scripts = Vec::new();
        if is_executable(&self.script) {
            scripts.push(self.script.clone());
        }
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let mut listed = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|cause| Error::List {
                        dir: self.dir.clone(),
                        cause,
                    })?;
                    listed.push(entry.path());
                }
            }
            // Only `network`, if anything: it is still checked below.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(cause) => {
                return Err(Error::List {
                    dir: self.dir.clone(),
                    cause,
                });
            }
        }
        listed.sort();
        for path in listed {
            if is_executable(&path) {
                scripts.push(path);
            } else if warned.insert((path.clone(), Warning::NotExecutable)) {
                warn!(path = %path.display(), "skipping a hook script that is not an executable file");
            }
        }
        for script in &scripts {
            if changeable_by_others(script)
                && warned.insert((script.clone(), Warning::ChangeableByOthers))
            {
                warn!(path = %script.display(), "a hook script that others than root may change runs as root");
            }
        }
        Ok(scripts)
    }
}

/// Runs `scripts` for `operation` on `network` with `input` on stdin, each for at most
/// [`HOOK_TIMEOUT`]. All of them run, as in libvirt, even after one failed, but none
/// after one was killed; the last failure is returned, as libvirt reports its last
/// error, and the earlier ones are logged.
pub async fn run(
    scripts: &[PathBuf],
    network: &str,
    operation: Operation,
    input: &str,
) -> Result<(), Error> {
    run_within(scripts, network, operation, input, HOOK_TIMEOUT).await
}

async fn run_within(
    scripts: &[PathBuf],
    network: &str,
    operation: Operation,
    input: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let mut last_failure: Option<Error> = None;
    for script in scripts {
        let result = if last_failure.as_ref().is_some_and(Error::is_timeout) {
            Err(Error::NotRun {
                command: command_line(script, network, operation),
            })
        } else {
            run_script(script, network, operation, input, timeout).await
        };
        let Err(e) = result else {
            continue;
        };
        if let Some(earlier) = last_failure.replace(e) {
            warn!(network, "{earlier}");
        }
    }
    last_failure.map_or(Ok(()), Err)
}

/// The script's command line, as messages show it.
fn command_line(script: &Path, network: &str, operation: Operation) -> String {
    let args = [network, operation.as_str(), operation.phase(), "-"];
    format!("{} {}", script.display(), args.join(" "))
}

/// A regular file (symlinks followed) with an execute bit, as libvirt's
/// `virFileIsExecutable` checks.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether `path` (symlinks followed) is writable by its group or by anyone, or owned by
/// another user than root and the daemon's.
fn changeable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|meta| {
        meta.mode() & 0o022 != 0
            || (meta.uid() != 0 && meta.uid() != nix::unistd::geteuid().as_raw())
    })
}

/// The input of every script: libvirt's `<hookData>`, the network's XML and, for port
/// operations, the port's, each indented by two spaces.
pub fn hook_data(network_xml: &str, port_xml: Option<&str>) -> String {
    let mut out = String::from("<hookData>\n");
    for document in std::iter::once(network_xml).chain(port_xml) {
        for line in document.lines() {
            if !line.is_empty() {
                out.push_str("  ");
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("</hookData>");
    out
}

async fn run_script(
    script: &Path,
    network: &str,
    operation: Operation,
    input: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let args = [network, operation.as_str(), operation.phase(), "-"];
    let command = command_line(script, network, operation);
    debug!(%command, "running hook script");
    let mut cmd = tokio::process::Command::new(script);
    cmd.args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .envs(
            PASSED_ENV.iter().filter_map(|name| {
                std::env::var_os(name).map(|value| (OsString::from(name), value))
            }),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    let group = child.id();
    // Fed and read beside the script, so that neither a script that does not read its
    // input nor one that writes much to stderr blocks on a full pipe, and ended once
    // it exits: a process it left running may hold either pipe open.
    let feed = child.stdin.take().map(|mut stdin| {
        let input = input.to_owned();
        // A script that exits without reading its input closes the pipe: not an error.
        tokio::spawn(async move { drop(stdin.write_all(input.as_bytes()).await) })
    });
    let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(read_capped(pipe, Arc::clone(&stderr))));
    let finished = tokio::time::timeout(timeout, child.wait()).await;
    if let Some(feed) = feed {
        feed.abort();
    }
    let status = match finished {
        Ok(status) => status.map_err(|source| Error::Wait {
            command: command.clone(),
            source,
        })?,
        Err(_) => {
            if let Some(reader) = reader {
                reader.abort();
            }
            if let Some(group) = group.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            return Err(Error::TimedOut { command, timeout });
        }
    };
    if status.success() {
        if let Some(reader) = reader {
            reader.abort();
        }
        return Ok(());
    }
    if let Some(mut reader) = reader {
        // What the script wrote before it exited is in the pipe by now.
        if tokio::time::timeout(STDERR_GRACE, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    let stderr = std::mem::take(&mut *stderr.lock().unwrap_or_else(PoisonError::into_inner));
    Err(Error::Failed {
        command,
        status: describe(status),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Reads `pipe` to its end into `kept`, up to [`STDERR_LIMIT`] bytes; the rest is read
/// and dropped.
async fn read_capped(mut pipe: tokio::process::ChildStderr, kept: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut chunk = [0; 1024];
    while let Ok(read @ 1..) = pipe.read(&mut chunk).await {
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        let room = STDERR_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..read.min(room)]);
    }
}

/// libvirt's `virProcessTranslateStatus` wording.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("fatal signal {signal}"),
        (None, None) => "status".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use super::*;

    fn install(dir: &Path, name: &str, script: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn hook_data_indents_the_documents_as_libvirt_does() {
        assert_eq!(
            hook_data(
                "<network>\n  <name>a</name>\n</network>\n",
                Some("<networkport>\n</networkport>\n")
            ),
            "<hookData>\n  <network>\n    <name>a</name>\n  </network>\n  <networkport>\n  </networkport>\n</hookData>"
        );
    }

    #[test]
    fn scripts_run_in_libvirts_order_and_skip_what_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks::new(dir.path());
        assert!(hooks.scripts().unwrap().is_empty(), "no scripts, no error");
        let main = install(dir.path(), "network", "#!/bin/sh\n");
        let second = install(&dir.path().join("network.d"), "b", "#!/bin/sh\n");
        let first = install(&dir.path().join("network.d"), "a", "#!/bin/sh\n");
        let later = dir.path().join("network.d/c");
        std::fs::write(&later, "not executable").unwrap();
        std::fs::create_dir(dir.path().join("network.d/d")).unwrap();
        assert_eq!(
            hooks.scripts().unwrap(),
            [main.clone(), first.clone(), second.clone()]
        );
        assert!(!changeable_by_others(&main));
        // One anyone may change still runs, as in libvirt; the daemon warns of it.
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(changeable_by_others(&first));
        assert_eq!(
            hooks.scripts().unwrap(),
            [main.clone(), first.clone(), second.clone()]
        );
        let warned = |path: &PathBuf, warning| {
            hooks
                .warned
                .lock()
                .unwrap()
                .contains(&(path.clone(), warning))
        };
        assert!(warned(&first, Warning::ChangeableByOthers));
        // Skipped first, then made executable by anyone: warned of that too.
        assert!(warned(&later, Warning::NotExecutable));
        std::fs::set_permissions(&later, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(hooks.scripts().unwrap().len(), 4);
        assert!(warned(&later, Warning::ChangeableByOthers));
    }

    /// The usual setup, `network` alone and no `network.d`: once it went unchecked.
    #[test]
    fn a_lone_network_script_others_may_change_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks::new(dir.path());
        let main = install(dir.path(), "network", "#!/bin/sh\n");
        std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(hooks.scripts().unwrap(), std::slice::from_ref(&main));
        assert!(
            hooks
                .warned
                .lock()
                .unwrap()
                .contains(&(main, Warning::ChangeableByOthers))
        );
    }

    #[test]
    fn a_failure_quotes_the_command_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = install(
            dir.path(),
            "network",
            "#!/bin/sh\necho \"no $2 for $1\" >&2\nexit 4\n",
        );
        let result = runtime().block_on(run(
            std::slice::from_ref(&script),
            "net1",
            Operation::Start,
            "",
        ));
        assert_eq!(
            result.unwrap_err().to_string(),
            format!(
                "Hook script execution failed: internal error: Child process ({} net1 start begin -) unexpected exit status 4: no start for net1",
                script.display()
            )
        );
        let killed = install(dir.path(), "killed", "#!/bin/sh\nkill -9 $$\n");
        let result = runtime().block_on(run(&[killed], "net1", Operation::Stopped, ""));
        assert!(
            result
                .unwrap_err()
                .to_string()
                .ends_with("stopped end -) unexpected fatal signal 9"),
        );
    }

    #[test]
    fn input_that_is_not_read_and_output_left_open_do_not_hold_a_script_up() {
        let dir = tempfile::tempdir().unwrap();
        // Exits without reading 1 MB of input, leaving a process that holds both its
        // stdin (unread) and its stderr.
        let script = install(
            dir.path(),
            "network",
            "#!/bin/sh\nexec 3<&0\nsleep 3 <&3 3<&- &\necho \"half done\" >&2\nexit 1\n",
        );
        let input = "x".repeat(1 << 20);
        let started = Instant::now();
        let result = runtime().block_on(run_script(
            &script,
            "net1",
            Operation::Updated,
            &input,
            Duration::from_secs(2),
        ));
        let message = result.unwrap_err().to_string();
        assert!(
            message.ends_with("unexpected exit status 1: half done"),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn scripts_that_run_too_long_are_killed_with_their_children_or_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let started_late = dir.path().join("started");
        let stuck = install(
            dir.path(),
            "network",
            &format!(
                "#!/bin/sh\n(sleep 2; touch {}) &\nsleep 30\n",
                marker.display()
            ),
        );
        let after = install(
            &dir.path().join("network.d"),
            "after",
            &format!("#!/bin/sh\ntouch {}\n", started_late.display()),
        );
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        // Killed after its time, with its child; the script after it is not started.
        let result = runtime().block_on(run_within(
            &[stuck, after],
            "net1",
            Operation::Start,
            "",
            timeout,
        ));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let error = result.unwrap_err();
        assert!(error.is_timeout());
        let message = error.to_string();
        assert!(
            message.ends_with(
                "network.d/after net1 start begin - was not run: a script before it was killed for running too long"
            ),
            "{message}"
        );
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a child of the script outlived the kill");
        assert!(!started_late.exists(), "a script ran after one was killed");
    }
}
