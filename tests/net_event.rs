//! netns tier: `kvnet net-event` against a daemon whose networks change, with the lines
//! virsh 9.0 prints for the same changes (recorded against libvirtd 9.0.0).

mod common;

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, kvnet_at, require, xml_file};

const UUID: &str = "6f1c0a52-9d51-4c0e-a4b7-3c2b1e0d9a01";

fn evnet_xml() -> String {
    format!(
        "<network><name>evnet</name><uuid>{UUID}</uuid><bridge name='evbr0'/>\
         <ip address='192.168.177.1' prefix='24'/></network>"
    )
}

const EVTRANS: &str = "<network><name>evtrans</name><bridge name='evbr1'/>\
    <ip address='192.168.178.1' prefix='24'/></network>";

/// A `kvnet net-event` running in the background; its stdout and stderr are collected
/// as they come.
struct Watcher {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Watcher {
    /// Starts `kvnet net-event ARGS` and returns once the daemon has its subscription
    /// (its debug log says so), so that no change made after this is missed.
    fn start(daemon: &Daemon, args: &[&str]) -> Watcher {
        let joined = subscriptions(daemon);
        let mut child = common::kvnet_command(&daemon.socket())
            .arg("net-event")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvnet net-event");
        let collect = |mut from: Box<dyn Read + Send>| {
            let into = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&into);
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while let Ok(n @ 1..) = from.read(&mut buffer) {
                    sink.lock().expect("lock").extend_from_slice(&buffer[..n]);
                }
            });
            into
        };
        let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
        let watcher = Watcher {
            child,
            stdout,
            stderr,
        };
        watcher.wait_until("the daemon has the subscription", || {
            subscriptions(daemon) > joined
        });
        watcher
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; stdout: {:?}, stderr: {:?}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (at most 20 s) for the process to end by itself; returns its exit code,
    /// stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("net-event did not end; stdout so far: {:?}", self.stdout());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The readers drain the pipes to their end.
        self.wait_until("stdout and stderr are drained", || {
            Arc::strong_count(&self.stdout) == 1 && Arc::strong_count(&self.stderr) == 1
        });
        (status.code(), self.stdout(), self.stderr())
    }

    fn interrupt(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).expect("SIGINT");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many event subscriptions the daemon has taken so far.
fn subscriptions(daemon: &Daemon) -> usize {
    daemon.log().matches("event subscriber joined").count()
}

fn line(network: &str, event: &str) -> String {
    format!("event 'lifecycle' for network {network}: {event}\n")
}

/// define, start, net-update, autostart, destroy, undefine of `evnet`, then net-create and
/// destroy of the transient `evtrans`: the events libvirt emits for them.
fn drive_a_lifecycle(daemon: &Daemon) -> Vec<String> {
    let dir = daemon.dirs.path();
    let evnet = xml_file(dir, "evnet.xml", &evnet_xml());
    let evtrans = xml_file(dir, "evtrans.xml", EVTRANS);
    daemon.ok(&["net-define", evnet.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", "evnet"]);
    // Neither a live update nor autostart is a lifecycle event in libvirt.
    daemon.ok(&[
        "net-update",
        "evnet",
        "add",
        "ip-dhcp-host",
        "<host mac='52:54:00:00:00:10' ip='192.168.177.10'/>",
        "--live",
        "--config",
    ]);
    daemon.ok(&["net-autostart", "evnet"]);
    daemon.ok(&["net-destroy", "evnet"]);
    daemon.ok(&["net-undefine", "evnet"]);
    daemon.ok(&["net-create", evtrans.to_str().expect("utf-8")]);
    daemon.ok(&["net-destroy", "evtrans"]);
    vec![
        line("evnet", "Defined"),
        line("evnet", "Started"),
        line("evnet", "Stopped"),
        line("evnet", "Undefined"),
        line("evtrans", "Started"),
        line("evtrans", "Stopped"),
    ]
}

#[test]
fn loop_prints_every_lifecycle_event_until_the_timeout() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Room for four watchers to subscribe and eight changes on a loaded machine: an
    // event after the timeout would be missed, and the count wrong.
    let args = ["--event", "lifecycle", "--loop", "--timeout", "12"];
    let plain = Watcher::start(&daemon, &args);
    let quiet = {
        let joined = subscriptions(&daemon);
        let out = common::kvnet_command(&daemon.socket())
            .args(["-q", "net-event"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        plain.wait_until("the -q watcher is subscribed", || {
            subscriptions(&daemon) > joined
        });
        out
    };
    let stamped = Watcher::start(&daemon, &[&args[..], &["--timestamp"]].concat());
    let json = Watcher::start(&daemon, &[&args[..], &["--json"]].concat());
    let lines = drive_a_lifecycle(&daemon).concat();
    let driven = Instant::now();

    // A timeout counted again from each event would end 12 s after the last one at the
    // earliest; counted from the verb's start it ends the setup and the lifecycle's
    // time before that.
    let (code, out, err) = plain.finish();
    assert!(
        driven.elapsed() < Duration::from_secs(12),
        "the timeout runs from the verb's start"
    );
    assert_eq!(
        out,
        format!("{lines}event loop timed out\nevents received: 6\n\n")
    );
    assert_eq!((code, err.as_str()), (Some(0), ""));

    let quiet = quiet.wait_with_output().expect("wait");
    assert_eq!(
        String::from_utf8_lossy(&quiet.stdout),
        format!("{lines}event loop timed out\nevents received: 6\n"),
        "-q leaves out only the trailing blank line"
    );

    // `2026-11-27 07:24:07.211+0000: event ...`: UTC, milliseconds, a literal +0000.
    let (code, out, _) = stamped.finish();
    assert_eq!(code, Some(0));
    let (events, tail): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|line| line.contains(": event "));
    assert_eq!(tail, ["event loop timed out", "events received: 6", ""]);
    let now = chrono::Utc::now();
    for (stamped, plain) in events.iter().zip(lines.lines()) {
        let (time, rest) = stamped.split_at(30);
        assert_eq!(rest, plain);
        let time = chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.3f+0000: ")
            .unwrap_or_else(|e| panic!("{stamped:?}: {e}"))
            .and_utc();
        assert!((now - time).num_seconds().abs() < 60, "{stamped}");
    }

    let (code, out, _) = json.finish();
    assert_eq!(code, Some(0));
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let seen: Vec<(String, String)> = records
        .iter()
        .map(|record| {
            assert_eq!(record["type"], "lifecycle", "{record}");
            assert!(record["time"].as_str().is_some_and(|t| t.ends_with('Z')));
            (
                record["network"].as_str().unwrap_or_default().to_owned(),
                record["event"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("evnet", "defined"),
        ("evnet", "started"),
        ("evnet", "stopped"),
        ("evnet", "undefined"),
        ("evtrans", "started"),
        ("evtrans", "stopped"),
    ]
    .map(|(network, event)| (network.to_owned(), event.to_owned()));
    assert_eq!(seen, expected);
    assert_eq!(records[0]["uuid"], UUID);
}

#[test]
fn one_shot_ends_at_the_first_event_or_fails_at_the_timeout() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let one_shot = Watcher::start(&daemon, &["--event", "lifecycle"]);
    let evnet = xml_file(daemon.dirs.path(), "evnet.xml", &evnet_xml());
    daemon.ok(&["net-define", evnet.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", "evnet"]);
    assert_eq!(
        one_shot.finish(),
        (
            Some(0),
            format!("{}events received: 1\n\n", line("evnet", "Defined")),
            String::new()
        )
    );

    // virsh also takes the network, event type and timeout positionally.
    for args in [
        &["net-event", "--event", "lifecycle", "--timeout", "1"][..],
        &["net-event", "evnet", "lifecycle", "1"],
    ] {
        let out = daemon.kvnet(args);
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&out.stdout)),
            (
                Some(1),
                "event loop timed out\nevents received: 0\n\n".into()
            ),
            "{args:?}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
    let out = daemon.kvnet(&[
        "net-event",
        "--event",
        "lifecycle",
        "--timeout",
        "1",
        "--json",
    ]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(1), &b""[..])
    );
}

#[test]
fn ctrl_c_ends_the_loop_with_virshs_lines() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let watcher = Watcher::start(&daemon, &["--event", "lifecycle", "--loop"]);
    let evnet = xml_file(daemon.dirs.path(), "evnet.xml", &evnet_xml());
    daemon.ok(&["net-define", evnet.to_str().expect("utf-8")]);
    let defined = line("evnet", "Defined");
    watcher.wait_until("the event is printed", || watcher.stdout() == defined);
    watcher.interrupt();
    assert_eq!(
        watcher.finish(),
        (
            Some(0),
            format!("{defined}event loop interrupted\nevents received: 1\n\n"),
            String::new()
        )
    );

    // The first watcher's subscription went with it.
    let watcher = Watcher::start(&daemon, &["--event", "lifecycle", "--loop"]);
    let log = daemon.log();
    let joined = log
        .lines()
        .rfind(|line| line.contains("event subscriber joined"));
    assert!(
        joined.is_some_and(|line| line.ends_with("subscribers=1")),
        "{joined:?}"
    );
    watcher.interrupt();
    assert_eq!(
        watcher.finish(),
        (
            Some(1),
            "event loop interrupted\nevents received: 0\n\n".into(),
            String::new()
        )
    );
}

#[test]
fn a_daemon_that_stops_ends_the_watch_with_virshs_disconnect_lines() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    // virsh names the daemon by its URI: `network+unix:///system?socket=...` here.
    let uri = daemon.ok(&["-q", "uri"]);
    let uri = uri.trim_end();
    let watcher = Watcher::start(&daemon, &["--event", "lifecycle", "--loop"]);
    let evnet = xml_file(daemon.dirs.path(), "evnet.xml", &evnet_xml());
    daemon.ok(&["net-define", evnet.to_str().expect("utf-8")]);
    // SIGTERM: the daemon must not wait for the stream to end by itself.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.pid().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("SIGTERM");
    let (code, out, err) = watcher.finish();
    assert_eq!(
        (code, out, err),
        (
            Some(1),
            format!("{}events received: 1\n\n", line("evnet", "Defined")),
            format!("error: Disconnected from {uri} due to end of file\n")
        )
    );
    daemon.stop();
    assert!(daemon.log().contains("stopped; networks keep running"));
}

#[test]
fn network_filter_follows_one_network_by_name_or_uuid() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let dir = daemon.dirs.path();
    let evnet = xml_file(dir, "evnet.xml", &evnet_xml());
    let other = xml_file(
        dir,
        "other.xml",
        "<network><name>other</name><bridge name='evbr2'/>\
         <ip address='192.168.179.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", evnet.to_str().expect("utf-8")]);
    daemon.ok(&["net-define", other.to_str().expect("utf-8")]);
    let args = ["--event", "lifecycle", "--loop", "--timeout", "12"];
    let by_name = Watcher::start(&daemon, &[&args[..], &["--network", "evnet"]].concat());
    let by_uuid = Watcher::start(&daemon, &[&args[..], &[UUID]].concat());
    daemon.ok(&["net-start", "other"]);
    daemon.ok(&["net-start", "evnet"]);
    daemon.ok(&["net-destroy", "other"]);
    daemon.ok(&["net-destroy", "evnet"]);
    daemon.ok(&["net-undefine", "other"]);
    daemon.ok(&["net-undefine", "evnet"]);
    let expected = format!(
        "{}{}{}event loop timed out\nevents received: 3\n\n",
        line("evnet", "Started"),
        line("evnet", "Stopped"),
        line("evnet", "Undefined")
    );
    assert_eq!(by_name.finish(), (Some(0), expected.clone(), String::new()));
    assert_eq!(by_uuid.finish(), (Some(0), expected, String::new()));

    // virsh prints these lines and then, its filter lost, watches every network; kvnet
    // stops there.
    let out = daemon.kvnet(&["net-event", "--event", "lifecycle", "--network", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: failed to get network 'nope'\n\
         error: Network not found: no network with matching name 'nope'\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\n");
}

#[test]
fn anyone_who_can_connect_may_watch() {
    if !require(DAEMON_NEEDS) || !require(&[common::Need::Program("setpriv")]) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::without_default_network();
    std::fs::set_permissions(daemon.dirs.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kvnet"))
        .arg("-c")
        .arg(daemon.socket())
        .args(["net-event", "--event", "lifecycle", "--timeout", "1"])
        .output()
        .expect("run setpriv");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "event loop timed out\nevents received: 0\n\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reader_that_never_reads_neither_blocks_the_daemon_nor_other_watchers() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    use std::io::Write;
    let daemon = Daemon::without_default_network();
    // A subscriber that sends its request and then never reads a byte.
    let joined = subscriptions(&daemon);
    let mut stuck = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect");
    stuck
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: kvnetd\r\n\r\n")
        .expect("request");
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscriptions(&daemon) == joined {
        assert!(Instant::now() < deadline, "no subscription");
        std::thread::sleep(Duration::from_millis(10));
    }
    let watcher = Watcher::start(&daemon, &["--event", "lifecycle", "--loop", "--json"]);
    // Far more than the stuck reader's socket buffers (~180 lines of ~250 bytes) and the
    // 256 events the daemon keeps for it hold: redefinitions with long names.
    // A change that waited for the stuck reader would hang: it gets 30 s, not 120.
    let client = netd::api::client::Client::new(daemon.socket())
        .with_answer_timeout(Duration::from_secs(30));
    let name = "n".repeat(120);
    let xml =
        format!("<network><name>{name}</name><uuid>{UUID}</uuid><bridge name='evbr9'/></network>");
    let rounds = 700;
    for round in 1..=rounds {
        client.define(&xml).expect("define");
        // The live watcher keeps up, even when the CI machine pauses it for a while: its
        // own slack (socket buffers and the kept events) is ~430 events.
        if round % 100 == 0 {
            watcher.wait_until("the live watcher caught up", || {
                watcher.stdout().lines().count() == round
            });
        }
    }
    watcher.wait_until("the live watcher got every event", || {
        watcher.stdout().lines().count() == rounds
    });
    assert!(
        !watcher.stdout().contains("missed"),
        "a reader that keeps up misses nothing"
    );
    // The stuck reader, reading at last, gets what its socket held, how many events it
    // missed, and the ones the daemon kept for it: every event accounted for, once.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut seen = String::new();
    let mut buffer = [0; 64 * 1024];
    let accounted = |seen: &str| -> usize {
        let events = seen.matches("\"type\":\"lifecycle\"").count();
        let missed: usize = seen
            .split("{\"type\":\"missed\",\"count\":")
            .skip(1)
            .filter_map(|rest| rest.split('}').next()?.parse::<usize>().ok())
            .sum();
        events + missed
    };
    while accounted(&seen) < rounds {
        let n = stuck.read(&mut buffer).expect("read the stuck stream");
        assert!(n > 0, "the stream ended");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert_eq!(accounted(&seen), rounds);
    assert!(seen.contains("\"type\":\"missed\""), "{seen}");
}

#[test]
fn list_and_bad_arguments_answer_as_virsh_without_a_daemon() {
    let socket = std::path::Path::new("/nonexistent/kvnetd.sock");
    let run = |args: &[&str]| -> Output { kvnet_at(socket, &[&["net-event"], args].concat()) };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    for (args, stdout) in [
        (&["--list"][..], "lifecycle\n\n"),
        // --list wins, whatever else is given, as in virsh.
        (
            &["--list", "--event", "foo", "--timeout", "abc"],
            "lifecycle\n\n",
        ),
        (&["--list", "--json"], "[\n  \"lifecycle\"\n]\n"),
    ] {
        let out = run(args);
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(0), stdout.to_owned(), String::new()),
            "{args:?}"
        );
    }
    let quiet = kvnet_at(socket, &["-q", "net-event", "--list"]);
    assert_eq!(text(&quiet.stdout), "lifecycle\n");
    for (args, stderr) in [
        (
            &[][..],
            "error: either --list or --event <type> is required\n",
        ),
        (&["--event", "foo"], "error: unknown event type foo\n"),
        (
            &["--event", "Lifecycle"],
            "error: unknown event type Lifecycle\n",
        ),
        (
            &["--event", "lifecycle", "--timeout", "0"],
            "error: Numeric value '0' for <timeout> option is malformed or out of range\n",
        ),
        (
            &["--event", "lifecycle", "--timeout", "-1"],
            "error: Numeric value '-1' for <timeout> option is malformed or out of range\n",
        ),
        (
            &["--event", "lifecycle", "--timeout", "2147484"],
            "error: Numeric value '2147484' for <timeout> option is malformed or out of range\n",
        ),
    ] {
        let out = run(args);
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(1), "\n".to_owned(), stderr.to_owned()),
            "{args:?}"
        );
    }
    let out = run(&["--event", "lifecycle", "--event", "lifecycle"]);
    assert_eq!(text(&out.stderr), "error: option --event already seen\n");
    // A valid command reaches for the daemon.
    let out = run(&["--event", "lifecycle", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("error: cannot connect to kvnetd at /nonexistent/kvnetd.sock"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_lease_file_that_cannot_be_removed_does_not_fail_a_stop_or_an_undefine() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    // A "lease file" that is a non-empty directory cannot be removed as a file.
    let jam = |name: &str| {
        let path = daemon.state_dir().join(format!("networks/{name}.leases6"));
        std::fs::create_dir_all(path.join("stuck")).expect("jam the lease file");
    };
    let xml = |name: &str, octet: u8| {
        let xml = format!(
            "<network><name>{name}</name><bridge name='kv{name}' stp='off'/>\
             <ip address='10.61.{octet}.1' prefix='24'/></network>"
        );
        xml_file(daemon.dirs.path(), &format!("{name}.xml"), &xml)
    };
    let transient = xml("brief", 1);
    let events = Watcher::start(&daemon, &["--event", "lifecycle", "--loop"]);
    daemon.ok(&["net-create", transient.to_str().expect("path")]);
    jam("brief");
    assert_eq!(
        daemon.ok(&["net-destroy", "brief"]),
        "Network brief destroyed\n\n"
    );
    let persistent = xml("kept", 2);
    daemon.ok(&["net-define", persistent.to_str().expect("path")]);
    jam("kept");
    assert_eq!(
        daemon.ok(&["net-undefine", "kept"]),
        "Network kept has been undefined\n\n"
    );
    events.wait_until("both events", || {
        let seen = events.stdout();
        seen.contains(&line("brief", "Stopped")) && seen.contains(&line("kept", "Undefined"))
    });
    assert!(
        daemon.log().contains("its lease file stays on disk"),
        "{}",
        daemon.log()
    );
    // Nor a daemon start that finds them.
    daemon.stop();
    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(daemon.ok(&["-q", "net-list", "--all"]), "");
}
