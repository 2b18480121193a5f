//! netns tier: the command line around the verbs, against a real daemon: one argument
//! holding several commands, the interactive terminal on stdin (the expected
//! transcripts are virsh 9.0's for the same commands), and the connection's URI.

mod common;

use std::io::Write;
use std::path::Path;

use common::{DAEMON_NEEDS, Daemon, kvnet_with_input, require, xml_file};

const DOCKER_MACHINES: &str = include_str!("../examples/networks/docker-machines.xml");

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8")
}

/// A daemon without the default network, with docker-machines defined (inactive).
fn with_docker_machines_defined() -> Daemon {
    let daemon = Daemon::without_default_network();
    let path = xml_file(daemon.dirs.path(), "dm.xml", DOCKER_MACHINES);
    daemon.ok(&["net-define", path.to_str().expect("utf-8 path")]);
    daemon
}

fn active(daemon: &Daemon) -> String {
    daemon.ok(&["net-list", "--name"])
}

#[test]
fn one_argument_runs_several_commands_in_order() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = xml_file(daemon.dirs.path(), "dm.xml", DOCKER_MACHINES);
    let script = format!(
        "net-define '{}'; net-start docker-machines\nnet-list --all # a comment; net-destroy docker-machines",
        path.display()
    );
    assert_eq!(
        daemon.ok(&[&script]),
        format!(
            "Network docker-machines defined from {}\n\n\
             Network docker-machines started\n\n \
             Name              State    Autostart   Persistent\n\
             ----------------------------------------------------\n \
             docker-machines   active   no          yes\n\n",
            path.display()
        )
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);

    // A failed command does not stop the ones after it; the last one's result is the
    // exit status.
    let out = daemon.kvnet(&["net-info nosuch; net-destroy docker-machines"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "\nNetwork docker-machines destroyed\n\n");
    assert_eq!(
        text(&out.stderr),
        "error: failed to get network 'nosuch'\n\
         error: Network not found: no network with matching name 'nosuch'\n"
    );
    assert!(daemon.bridges().is_empty());
    let out = daemon.kvnet(&["net-start docker-machines; net-info nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "Network docker-machines started\n\n\n");

    // `quit` ends the string; -q drops the blank lines.
    let out = daemon.kvnet(&[
        "-q",
        "net-destroy docker-machines; quit; net-start docker-machines",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(active(&daemon), "\n");
}

#[test]
fn a_command_string_that_does_not_parse_runs_nothing() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = with_docker_machines_defined();
    for (script, error) in [
        (
            "net-start docker-machines; net-list --bogus",
            "error: command 'net-list' doesn't support option --bogus\n",
        ),
        (
            "net-start docker-machines; net-info",
            "error: command 'net-info' requires <network> option\n",
        ),
        (
            "net-start docker-machines; net-list --all --all",
            "error: option --all already seen\n",
        ),
        (
            "net-start docker-machines; net-nosuch",
            "error: unknown command: 'net-nosuch'\n",
        ),
        (
            "net-start docker-machines; net-info \"x",
            "error: missing \"\n",
        ),
        ("net-start docker-machines x\\", "error: dangling \\\n"),
        (
            "net-start docker-machines; exit 3",
            "error: unexpected data '3'\n",
        ),
        (
            "net-start docker-machines; exit -- foo",
            "error: unexpected data 'foo'\n",
        ),
    ] {
        let out = daemon.kvnet(&[script]);
        assert_eq!(out.status.code(), Some(1), "{script}");
        assert_eq!(text(&out.stdout), "", "{script}");
        assert_eq!(text(&out.stderr), error, "{script}");
    }
    assert_eq!(active(&daemon), "\n", "a refused string started a network");

    // virsh checks exclusive options only when the command runs: those before it ran.
    let out = daemon.kvnet(&[
        "net-start docker-machines; net-update docker-machines add dns-host '<host/>' --current --live",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "Network docker-machines started\n\n\n");
    assert_eq!(
        text(&out.stderr),
        "error: Options --current and --live are mutually exclusive\n"
    );
    assert_eq!(active(&daemon), "docker-machines\n\n");
}

#[test]
fn the_interactive_terminal_reads_commands_from_stdin() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = with_docker_machines_defined();

    // Piped input is echoed after each prompt, as virsh's readline does; failures do
    // not change the exit status; `quit` ends the session before the last line.
    let out = kvnet_with_input(
        &daemon,
        &[],
        "net-start docker-machines\nnet-info nosuch\n\nnet-list --name; quit\nnet-destroy docker-machines\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "Welcome to kvnet, the virtualization interactive terminal.\n\n\
         Type:  'help' for help with commands\n       'quit' to quit\n\n\
         kvnet # net-start docker-machines\n\
         Network docker-machines started\n\n\
         kvnet # net-info nosuch\n\n\
         kvnet # \n\
         kvnet # net-list --name; quit\n\
         docker-machines\n\n\n"
    );
    assert_eq!(
        text(&out.stderr),
        "error: failed to get network 'nosuch'\n\
         error: Network not found: no network with matching name 'nosuch'\n"
    );
    assert_eq!(active(&daemon), "docker-machines\n\n");

    // Quiet: no greeting; the session ends at the end of input, after a last prompt.
    let out = kvnet_with_input(&daemon, &["-q"], "net-destroy docker-machines");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "kvnet # net-destroy docker-machines\nkvnet # \n"
    );
    assert_eq!(active(&daemon), "\n");
}

/// `text` with each `(Time: N ms)` of `virsh -t` made `(Time: T ms)`, after checking N
/// is a number with three decimals.
fn without_times(text: &str) -> String {
    let mut rest = text;
    let mut out = String::new();
    while let Some(at) = rest.find("(Time: ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "(Time: ".len()..];
        let end = after.find(" ms)").expect("a time ends with ' ms)'");
        let (whole, decimals) = after[..end].split_once('.').expect("a decimal time");
        assert!(
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && decimals.len() == 3
                && decimals.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
        out.push_str("(Time: T ms)");
        rest = &after[end + " ms)".len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn global_options_read_as_virsh_reads_them() {
    // Without a daemon: versions, and options virsh's getopt refuses.
    let bare = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
            .args(args)
            .env_remove("KVNET_SOCKET")
            .output()
            .expect("run kvnet")
    };
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["-v"][..], &["--version"], &["--version=short"], &["-qv"]] {
        let out = bare(args);
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), version.as_str()),
            "{args:?}"
        );
    }
    for args in [&["-V"][..], &["--version=long"]] {
        let out = bare(args);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
        assert_ne!(text(&out.stdout), version);
    }
    for (args, error) in [
        (
            &["-x", "net-list"][..],
            "error: unsupported option '-x'. See --help.\n",
        ),
        (&["-qz"], "error: unsupported option '-z'. See --help.\n"),
        (
            &["--bogus"],
            "error: unsupported option '--bogus'. See --help.\n",
        ),
        (
            &["-c"],
            "error: option '-c'/'--connect' requires an argument\n",
        ),
        (
            &["--connect"],
            "error: option '-c'/'--connect' requires an argument\n",
        ),
        // A prefix of two long options; a flag given a value.
        (
            &["--k", "0"],
            "error: unsupported option '--k'. See --help.\n",
        ),
        (
            &["--quiet=1"],
            "error: unsupported option '-q'. See --help.\n",
        ),
        // After --, the command, however it looks.
        (&["--", "-q", "net-list"], "error: unknown command: '-q'\n"),
        // Checked as virsh checks them, though keepalives and the console's escape key
        // mean nothing on kvnetd's socket.
        (&["-k", "x"], "error: Invalid value for option -k\n"),
        (
            &["-K", "-1"],
            "error: option -K requires a positive integer argument\n",
        ),
        (&["-d", "2x"], "error: option -d takes a numeric argument\n"),
        (
            &["-e", "^1"],
            "error: Invalid string '^1' for escape sequence\n",
        ),
        (
            &["-e", "^"],
            "error: Invalid string '^' for escape sequence\n",
        ),
        // Read as a C int, as virsh reads them.
        (
            &["-d", "99999999999"],
            "error: option -d takes a numeric argument\n",
        ),
        (
            &["-k", "99999999999"],
            "error: Invalid value for option -k\n",
        ),
    ] {
        let out = bare(args);
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(1), "", error),
            "{args:?}"
        );
    }
    // Repeated, shortened to a unique prefix, or with arguments virsh takes: run.
    let leading: [&[&str]; 5] = [
        &["-q", "-q", "--qui", "-r", "--read"],
        &["-k", "0", "-K3", "--keepalive-c=5", "-e", "^]", "--esc=x"],
        &["-d", "4", "--deb=1", "-d", " 2"],
        &["--conn", "/nonexistent/kvnetd.sock"],
        &["-l", "/dev/null"],
    ];
    for options in leading {
        let out = bare(&[options, &["echo", "ran"]].concat());
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), if options[0] == "-q" { "ran" } else { "ran\n" }),
            "{options:?}: {}",
            text(&out.stderr)
        );
    }
    // A level out of range is ignored with virsh's line, and the command runs.
    let out = bare(&["-q", "-d", "5", "echo", "ran"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("ran", "error: ignoring debug level 5 out of range [0-4]\n")
    );
    // -d and -l log each command; -l alone, as virsh's, only errors.
    let log = tempfile::NamedTempFile::new().expect("log file");
    let log_path = log.path().to_str().expect("utf-8 path");
    bare(&["-q", "-d", "1", "-l", log_path, "echo", "logged"]);
    let logged = std::fs::read_to_string(log.path()).expect("log");
    assert!(
        logged.contains("running") && logged.contains("Echo"),
        "{logged}"
    );
    let errors = tempfile::NamedTempFile::new().expect("log file");
    let errors_path = errors.path().to_str().expect("utf-8 path");
    let socket = "/nonexistent/kvnetd.sock";
    bare(&["-q", "-l", errors_path, "-c", socket, "echo ok; net-info n"]);
    let logged = std::fs::read_to_string(errors.path()).expect("log");
    assert!(!logged.contains("INFO"), "{logged}");
    assert!(
        logged.contains("ERROR") && logged.contains("cannot connect to kvnetd"),
        "{logged}"
    );
    // Logging to stderr, a failure is told once, in virsh's words.
    let out = bare(&["-q", "-d", "4", "-c", socket, "net-info", "n"]);
    assert_eq!(
        text(&out.stderr),
        "error: cannot connect to kvnetd at /nonexistent/kvnetd.sock: No such file or \
         directory (is kvnetd running?)\n"
    );

    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = with_docker_machines_defined();
    let socket = daemon.socket();
    let socket = socket.to_str().expect("utf-8 path");
    // Bundled as getopt bundles them, the socket attached to -c; an empty -c is the
    // default connection, and a later -c wins.
    let out = bare(&[
        "-qrc",
        socket,
        "net-list --all --name; net-start docker-machines",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "docker-machines\n");
    assert!(
        text(&out.stderr).contains("read only access"),
        "{}",
        text(&out.stderr)
    );
    let out = bare(&[
        "-c",
        "",
        "-q",
        &format!("-c{socket}"),
        "net-list --all --name",
    ]);
    assert_eq!(text(&out.stdout), "docker-machines\n");
    // -t: the time in place of the blank line ending each command, quiet or not.
    let out = daemon.kvnet(&["-t", "net-start docker-machines; net-list --name"]);
    assert_eq!(
        without_times(text(&out.stdout)),
        "Network docker-machines started\n\n(Time: T ms)\n\n\
         docker-machines\n\n(Time: T ms)\n\n"
    );
    let out = daemon.kvnet(&[
        "-q",
        "--timing",
        "net-destroy docker-machines; net-info nosuch",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        without_times(text(&out.stdout)),
        "\n(Time: T ms)\n\n\n(Time: T ms)\n\n"
    );
    // Never after JSON: a script parses it whole.
    let out = daemon.kvnet(&["-t", "net-list", "--all", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("nothing but JSON");
    // The read-only terminal prompts with `>`, as virsh's.
    let out = kvnet_with_input(&daemon, &["-q", "-r"], "net-list --name");
    assert_eq!(text(&out.stdout), "kvnet > net-list --name\nkvnet > \n");
}

#[test]
fn commands_stop_at_an_unreachable_daemon() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("nobody-home.sock");
    let out = common::kvnet_at(&socket, &["net-list; net-list; net-info x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: cannot connect to kvnetd at {}: No such file or directory (is kvnetd running?)\n",
            socket.display()
        )
    );
}

#[test]
fn uri_names_the_daemon_by_a_uri_that_connects_back_to_it() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let uri = format!(
        "network+unix:///system?socket={}",
        daemon.socket().display()
    );
    assert_eq!(daemon.ok(&["uri"]), format!("{uri}\n\n"));
    assert_eq!(daemon.ok(&["-q", "uri"]), format!("{uri}\n"));
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["uri", "--json"])).expect("json");
    assert_eq!(json["uri"], uri.as_str());
    assert_eq!(json["daemon"], "kvnetd");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));

    // The URI reaches the same daemon.
    let out = common::kvnet_command(Path::new(&uri))
        .args(["net-list", "--all", "--name"])
        .output()
        .expect("run kvnet");
    assert_eq!(text(&out.stdout), "\n", "{}", text(&out.stderr));
    assert!(out.status.success());

    // `uri` checks that the daemon answers, as virsh's connection does.
    daemon.stop();
    let err = daemon.fails(&["uri"]);
    assert!(
        err.starts_with("error: cannot connect to kvnetd at "),
        "{err}"
    );
}

/// A kvnet terminal session on a pseudo-terminal, as a person at a terminal has it.
struct PtySession {
    child: std::process::Child,
    master: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// How much of the output [`PtySession::expect`] has gone past.
    seen: usize,
}

impl PtySession {
    /// `kvnet -c <socket>` with no command, its stdio on a new pseudo-terminal.
    fn start(daemon: &Daemon, cache: &Path) -> PtySession {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = std::fs::File::from(pty.slave);
        let child = common::kvnet_command(&daemon.socket())
            .env("TERM", "xterm")
            .env("XDG_CACHE_HOME", cache)
            .stdin(slave.try_clone().expect("slave"))
            .stdout(slave.try_clone().expect("slave"))
            .stderr(slave)
            .spawn()
            .expect("run kvnet on a pty");
        let master = std::fs::File::from(pty.master);
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("master");
        let collected = std::sync::Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = std::io::Read::read(&mut reader, &mut buffer) {
                collected
                    .lock()
                    .expect("output")
                    .extend_from_slice(&buffer[..read]);
            }
        });
        PtySession {
            child,
            master,
            output,
            seen: 0,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned()
    }

    /// Waits until `text` appears after what was expected before, and goes past it.
    /// (The editor redraws the prompt as a line changes, so only order tells.)
    fn expect(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let output = self.output.lock().expect("output").clone();
            let after = &output[self.seen.min(output.len())..];
            if let Some(at) = after.windows(text.len()).position(|w| w == text.as_bytes()) {
                self.seen += at + text.len();
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} after {:?}",
                String::from_utf8_lossy(after)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type");
    }

    /// Waits (10 s at most) for kvnet to exit; its status must be success.
    fn finish(&mut self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("kvnet status") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kvnet did not exit: {:?}", self.output());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "{status}: {}", self.output());
        self.output()
    }
}

impl Drop for PtySession {
    /// A session a failed test leaves behind must not outlive it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn on_a_terminal_lines_complete_edit_and_recall_across_sessions() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = with_docker_machines_defined();
    let cache = tempfile::tempdir().expect("cache dir");
    let prompt = "kvnet # ";
    let listed = "docker-machines\r\n";

    // Tab completes the option; Up recalls the line; Ctrl-C drops a typed line.
    let mut session = PtySession::start(&daemon, cache.path());
    session.expect("Welcome to kvnet");
    session.expect(prompt);
    session.type_keys(b"net-list --all --na\t\r");
    session.expect(listed);
    session.expect(prompt);
    session.type_keys(b"\x1b[A\r");
    session.expect(listed);
    session.expect(prompt);
    session.type_keys(b"net-start docker-machines");
    session.expect("docker-machines");
    session.type_keys(b"\x03");
    session.expect(prompt);
    session.type_keys(b"quit\r");
    let output = session.finish();
    assert_eq!(
        active(&daemon),
        "\n",
        "the interrupted line ran: {output:?}"
    );
    let history =
        std::fs::read_to_string(cache.path().join("kvnet/history")).expect("history file");
    assert!(history.contains("net-list --all --name"), "{history:?}");
    assert!(!history.contains("net-start"), "{history:?}");

    // The next session recalls it (before `quit`); Tab completes a network the daemon
    // has (net-start: an inactive one); Ctrl-D at an empty prompt ends it.
    let mut session = PtySession::start(&daemon, cache.path());
    session.expect(prompt);
    session.type_keys(b"\x1b[A\x1b[A\r");
    session.expect(listed);
    session.expect(prompt);
    session.type_keys(b"net-start dock\t\r");
    session.expect("Network docker-machines started");
    session.expect(prompt);
    session.type_keys(b"\x04");
    session.finish();
}

/// Runs kvnet with no daemon behind its socket, in `/` with `HOME=/tmp`, feeding
/// `input`: its exit status, stdout and stderr.
fn offline(args: &[&str], input: Option<&str>) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"));
    command
        .args(["-c", "/nonexistent/kvnetd.sock"])
        .args(args)
        .current_dir("/")
        .env("HOME", "/tmp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("run kvnet");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input.unwrap_or_default().as_bytes()).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("kvnet");
    (
        out.status.code(),
        text(&out.stdout).to_owned(),
        text(&out.stderr).to_owned(),
    )
}

/// virsh's own commands, which scripts use in command strings: no daemon needed.
#[test]
fn echo_pwd_and_cd_work_as_in_virsh() {
    let run = offline;
    let ok = |stdout: &str| (Some(0), stdout.to_owned(), String::new());
    // Bytes as virsh 9.0 prints them.
    assert_eq!(run(&["-q", "echo", "a", "b"], None), ok("a b"));
    assert_eq!(run(&["echo", "a", "b"], None), ok("a b\n"));
    assert_eq!(
        run(
            &["-q", "echo", "--shell", "it's", "plain", "a b", "$x", ""],
            None
        ),
        ok("'it'\\''s' plain 'a b' '$x' ''")
    );
    assert_eq!(
        run(&["-q", "echo", "--xml", "\"q'<>&"], None),
        ok("&quot;q&apos;&lt;&gt;&amp;")
    );
    assert_eq!(
        run(&["-q", "echo", "--split", "a,b", "c,,d", "e"], None),
        ok("a\nb\n c,d\n e\n")
    );
    assert_eq!(run(&["-q", "echo", "-x", "--", "--y"], None), ok("-x --y"));
    assert_eq!(
        run(&["-q", "echo", "a", "--string", "x", "y"], None),
        ok("a x y")
    );
    assert_eq!(run(&["-q", "echo", "--err"], None), ok(""));
    assert_eq!(run(&["-q", "echo a; echo b"], None), ok("ab"));
    assert_eq!(
        run(&["echo", "--err", "x", "y"], None),
        (Some(0), "\n".to_owned(), "error: x y\n".to_owned())
    );
    assert_eq!(
        run(&["-q", "echo", "--split", "--xml", "a"], None),
        (
            Some(1),
            String::new(),
            "error: Options --xml and --split are mutually exclusive\n".to_owned()
        )
    );
    assert_eq!(run(&["pwd"], None), ok("/\n\n"));
    assert_eq!(
        run(&["-q", "cd", "/tmp"], None),
        (
            Some(1),
            String::new(),
            "error: cd: command valid only in interactive mode\n".to_owned()
        )
    );
    // In the terminal (here fed by a pipe), cd changes the directory.
    let (status, stdout, stderr) = run(
        &["-q"],
        Some("cd /nonexistent\ncd /usr\npwd\ncd\npwd\ncd --dir /\npwd\n"),
    );
    assert_eq!(status, Some(0));
    assert_eq!(
        stdout,
        "kvnet # cd /nonexistent\nkvnet # cd /usr\nkvnet # pwd\n/usr\nkvnet # cd\n\
         kvnet # pwd\n/tmp\nkvnet # cd --dir /\nkvnet # pwd\n/\nkvnet # \n"
    );
    assert_eq!(
        stderr,
        "error: cd: No such file or directory: /nonexistent\n"
    );
}

/// `help`, `help GROUP`, `help VERB` and `VERB --help` print virsh 9.0's bytes, with
/// kvnet's own options (`--json`) last.
#[test]
fn help_is_laid_out_as_virsh_lays_it_out() {
    let run = offline;
    let ok = |stdout: &str| (Some(0), stdout.to_owned(), String::new());
    // virsh's help of its network group; a topic that is none fails when it runs.
    let (status, group, _) = run(&["help", "network"], None);
    assert_eq!(status, Some(0));
    assert!(
        group.starts_with(
            " Networking (help keyword 'network'):\n    \
             net-autostart                  autostart a network\n"
        ),
        "{group}"
    );
    assert!(
        group.ends_with("delete the specified network port\n\n"),
        "{group}"
    );
    assert_eq!(group.lines().count(), 21);
    assert_eq!(
        run(&["-q", "help bogus; echo x"], None),
        (
            Some(0),
            "x".to_owned(),
            "error: command or command group 'bogus' doesn't exist\n".to_owned()
        )
    );
    // virsh's `help net-start`, byte for byte, however asked.
    let net_start = "  NAME\n    net-start - start a (previously defined) inactive network\n\
                     \n  SYNOPSIS\n    net-start <network>\n\
                     \n  DESCRIPTION\n    Start a network.\n\
                     \n  OPTIONS\n    [--network] <string>  network name or uuid\n\n";
    for asked in [
        &["help", "net-start"][..],
        &["help", "--command", "net-start"],
        &["net-start", "--help"],
        &["net-start", "default", "--help"],
        &["help", "net-start", "ignored"],
        &["help", "net-start", "--ignored"],
    ] {
        assert_eq!(run(asked, None), ok(&format!("{net_start}\n")), "{asked:?}");
    }
    assert_eq!(run(&["-q", "net-start", "--help"], None), ok(net_start));
    // As virsh: an option the command lacks is refused first; after `--`, `--help` is
    // data, as it is as an option's value.
    assert_eq!(
        run(&["net-start", "--help", "--bogus"], None),
        (
            Some(1),
            String::new(),
            "error: command 'net-start' doesn't support option --bogus\n".to_owned()
        )
    );
    // kvnet's own options (-q, -r, -c) come before the verb, as virsh's do: after it
    // they are options the command lacks, refused before `--help` could be shown, and
    // the command is not run.
    for (asked, option) in [
        (&["net-destroy", "n2", "--help", "--quiet"][..], "--quiet"),
        (&["net-destroy", "n2", "--readonly", "--help"], "--readonly"),
        (&["net-list", "--connect=/x"], "--connect"),
    ] {
        assert_eq!(
            run(asked, None),
            (
                Some(1),
                String::new(),
                format!(
                    "error: command '{}' doesn't support option {option}\n",
                    asked[0]
                )
            ),
            "{asked:?}"
        );
    }
    let (status, _, stderr) = run(&["net-start", "--", "--help"], None);
    assert_eq!(status, Some(1));
    assert!(stderr.contains("cannot connect to kvnetd"), "{stderr}");
    let (_, stdout, _) = run(&["net-dumpxml", "x", "--xpath", "--help"], None);
    assert_eq!(stdout, "");
    assert_eq!(
        run(&["net-event", "--network", "--help", "--list"], None),
        ok("lifecycle\n\n")
    );
    // Every group kvnet's commands are in, in virsh's order and layout.
    let (status, all, _) = run(&["help"], None);
    assert_eq!(status, Some(0));
    assert!(
        all.starts_with(
            "Grouped commands:\n\n Host and Hypervisor (help keyword 'host'):\n    \
             uri                            print the hypervisor canonical URI\n\n \
             Networking (help keyword 'network'):\n"
        ),
        "{all}"
    );
    assert!(
        all.ends_with(
            " Virsh itself (help keyword 'virsh'):\n    \
             cd                             change the current directory\n    \
             echo                           echo arguments. Used for internal testing.\n    \
             exit                           quit this interactive terminal\n    \
             help                           print help\n    \
             pwd                            print the current directory\n    \
             quit                           quit this interactive terminal\n\n\n"
        ),
        "{all}"
    );
}

/// virsh reads a word as an option only when it starts with `--` and a letter or digit:
/// `-dash` is a network's name, `-1` an option's value, `-q` after the verb data.
#[test]
fn words_with_one_dash_are_data_as_in_virsh() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
            .args(["-q", "-c", "/nonexistent/kvnetd.sock"])
            .args(args)
            .output()
            .expect("run kvnet");
        text(&out.stderr).to_owned()
    };
    let unreachable = "error: cannot connect to kvnetd at /nonexistent/kvnetd.sock";
    for args in [
        &["net-info", "-dash"][..],
        &["net-info", "--network", "-dash"],
        &["net-info", "---x"],
        &["net-dumpxml", "n", "--xpath", "-x"],
        &["net-dhcp-leases", "n", "--mac", "-x"],
        &["net-update", "n", "add", "ip-dhcp-host", "<host/>", "-1"],
    ] {
        assert!(
            run(args).starts_with(unreachable),
            "{args:?}: {}",
            run(args)
        );
    }
    for (args, error) in [
        (&["net-list", "-q"][..], "error: unexpected data '-q'\n"),
        (&["net-info", "n", "-x"], "error: unexpected data '-x'\n"),
        (&["net-info", "-x", "-y"], "error: unexpected data '-y'\n"),
        (
            &["net-info", "--bogus", "-x"],
            "error: command 'net-info' doesn't support option --bogus\n",
        ),
        // net-update's fifth word is its parent index.
        (
            &[
                "net-update",
                "n",
                "add",
                "ip-dhcp-host",
                "<host/>",
                "0",
                "1",
            ],
            "error: unexpected data '1'\n",
        ),
    ] {
        assert_eq!(run(args), error, "{args:?}");
    }
}

/// Output that cannot be written fails the command, with no panic: a full disk under
/// `--json > file` is an error (scripts would read a truncated file), a reader that
/// went away is not, and a stderr that cannot be written loses only the message.
#[test]
fn unwritable_output_fails_the_command_without_a_panic() {
    let run = |args: &[&str], stdout: std::process::Stdio, stderr: std::process::Stdio| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
            .args(["-c", "/nonexistent/kvnetd.sock"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .expect("run kvnet")
    };
    let full = || std::process::Stdio::from(std::fs::File::create("/dev/full").expect("/dev/full"));
    let piped = std::process::Stdio::piped;
    let out = run(&["help", "net-list"], full(), piped());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: cannot write the output: No space left on device"),
        "{}",
        text(&out.stderr)
    );
    // A reader that closed its end before anything was written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
        .args(["help", "net-list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kvnet");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("kvnet");
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), ""));
    for args in [
        &["net-info", "nosuch"][..],
        &["net-dumpxml", "n", "--xpath", "//["],
        &["echo", "--err", "x"],
    ] {
        let out = run(args, piped(), full());
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked");
    }
}

/// `-c`'s value is the socket whatever it looks like, as virsh's getopt reads it: a
/// word like an option or like a verb.
#[test]
fn a_socket_named_like_an_option_or_a_verb_is_still_the_socket() {
    // The sockets named are relative to `/`, where none of them is.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
            .args(args)
            .current_dir("/")
            .output()
            .expect("run kvnet");
        text(&out.stderr).to_owned()
    };
    for (args, socket) in [
        (&["-c", "-sock", "uri"][..], "-sock"),
        (&["--connect=-q", "uri"], "-q"),
        (&["-q", "-c", "net-list", "net-list"], "net-list"),
    ] {
        let stderr = run(args);
        assert!(
            stderr.starts_with(&format!("error: cannot connect to kvnetd at {socket}:")),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        run(&["-c", "net-list", "net-info"]),
        "error: command 'net-info' requires <network> option\n"
    );
}

/// kvnet's own options come before the first command only: in a later command's place
/// of a command string, or on an interactive line, one is no command (as virsh says),
/// and nothing of the string runs.
#[test]
fn an_option_in_a_commands_place_is_an_unknown_command() {
    for (string, option) in [
        ("echo ran; -q uri", "-q"),
        ("echo ran; --connect=/elsewhere uri", "--connect=/elsewhere"),
    ] {
        assert_eq!(
            offline(&[string], None),
            (
                Some(1),
                String::new(),
                format!("error: unknown command: '{option}'\n")
            ),
            "{string}"
        );
    }
}
