//! netns tier: the command line around the verbs, against a real daemon: one argument
//! holding several commands, the interactive terminal on stdin (the expected
//! transcripts are virsh 9.0's for the same commands), and the connection's URI.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{DAEMON_NEEDS, Daemon, require, xml_file};

const DOCKER_MACHINES: &str = include_str!("../examples/networks/docker-machines.xml");

/// Runs `kvnet -c SOCKET args...` with `input` on its stdin.
fn kvnet_with_input(daemon: &Daemon, args: &[&str], input: &str) -> Output {
    let mut child = common::kvnet_command(&daemon.socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvnet");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kvnet output")
}

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
