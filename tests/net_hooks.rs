//! netns tier: libvirt's network hook scripts (`<config>/hooks/network` and
//! `network.d/`): when they run, what they are given, what their failures cancel, and
//! the port-forwarding recipe libvirt users run from them.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Daemon, DaemonOptions, Netns, attach_guest, attach_upstream, kvnet_command, port_needs,
    port_xml, require, wait_for_forwarding, xml_file,
};

const NETWORK: &str = "<network>
  <name>hooknet</name>
  <forward mode='nat'/>
  <bridge name='kvhook0' stp='off'/>
  <ip address='192.168.150.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.150.100' end='192.168.150.200'/>
    </dhcp>
  </ip>
</network>
";

const PORT_UUID: &str = "8a3bb3b4-2f4c-4a5e-9d38-4c7a2e0d2b11";

/// Writes an executable script.
fn install(path: &Path, script: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("hooks dir");
    std::fs::write(path, script).expect("write the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A script at `at` (under the hooks dir) that records each call: its arguments, its
/// input, the descriptors a program it runs inherits, and the names in its environment.
/// Each record is appended whole, so a reader never sees half of one.
fn install_recorder(daemon: &Daemon, at: &str) -> PathBuf {
    let log = daemon.dirs.path().join("hooks.log");
    install(
        &daemon.config_dir().join("hooks").join(at),
        &format!(
            "#!/bin/sh\n\
             record=$(mktemp)\n\
             {{\n\
               echo \"== $*\"\n\
               cat\n\
               echo\n\
               echo \"fds: $(ls /proc/self/fd | tr '\\n' ' ')\"\n\
               echo \"env: $(env | cut -d= -f1 | sort | tr '\\n' ' ')\"\n\
             }} > \"$record\"\n\
             cat \"$record\" >> {}\n\
             rm -f \"$record\"\n",
            log.display()
        ),
    );
    log
}

/// One recorded call.
#[derive(Debug)]
struct Call {
    args: String,
    input: String,
    fds: String,
    env: Vec<String>,
}

fn calls(log: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split("== ")
        .filter(|call| !call.is_empty())
        .map(|call| {
            let (args, rest) = call.split_once('\n').expect("arguments line");
            let (input, rest) = rest.split_once("\nfds: ").expect("fds line");
            let (fds, env) = rest.split_once("\nenv: ").expect("env line");
            Call {
                args: args.to_owned(),
                input: input.to_owned(),
                fds: fds.trim().to_owned(),
                env: env.split_whitespace().map(str::to_owned).collect(),
            }
        })
        .collect()
}

/// How many whole records `log` holds.
fn records(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("env: "))
        .count()
}

fn network_file(daemon: &Daemon) -> String {
    xml_file(daemon.dirs.path(), "hooknet.xml", NETWORK)
        .to_string_lossy()
        .into_owned()
}

fn port_file(daemon: &Daemon) -> String {
    let xml = port_xml("vm1", "52:54:00:15:00:01").replace(
        "<networkport>\n",
        &format!("<networkport>\n  <uuid>{PORT_UUID}</uuid>\n"),
    );
    xml_file(daemon.dirs.path(), "port.xml", &xml)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn hook_scripts_run_at_each_step_with_libvirts_arguments_and_input() {
    if !require(&port_needs()) {
        return;
    }
    // Started with a descriptor its parent left inheritable, which no script may get.
    let daemon = Daemon::start_with(DaemonOptions {
        no_default_network: true,
        inherited_fd: true,
        ..DaemonOptions::default()
    });
    let log = install_recorder(&daemon, "network");
    daemon.ok(&["net-define", &network_file(&daemon)]);
    assert!(calls(&log).is_empty(), "a define runs no script");

    daemon.ok(&["net-start", "hooknet"]);
    daemon.ok(&["net-port-create", "hooknet", &port_file(&daemon)]);
    daemon.ok(&["net-port-delete", "hooknet", PORT_UUID]);
    // A port whose guest went (its tap with it) ends at once, with no request to the
    // daemon: it follows the kernel's link deletions.
    daemon.ok(&["net-port-create", "hooknet", &port_file(&daemon)]);
    daemon.ns.sh("ip link del vnet0").expect("delete the tap");
    let deadline = Instant::now() + Duration::from_secs(5);
    while records(&log) < 6 {
        assert!(
            Instant::now() < deadline,
            "no port-deleted call:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        daemon.ok(&["net-port-list", "hooknet", "--uuid"]).trim(),
        ""
    );
    daemon.ok(&[
        "net-update",
        "hooknet",
        "add",
        "dns-host",
        "<host ip='192.168.150.5'><hostname>db</hostname></host>",
        "--live",
    ]);
    daemon.ok(&["net-destroy", "hooknet"]);

    let calls = calls(&log);
    let args: Vec<&str> = calls.iter().map(|call| call.args.as_str()).collect();
    assert_eq!(
        args,
        [
            "hooknet start begin -",
            "hooknet started begin -",
            "hooknet port-created begin -",
            "hooknet port-deleted begin -",
            "hooknet port-created begin -",
            "hooknet port-deleted begin -",
            "hooknet updated begin -",
            "hooknet stopped end -",
        ],
        "log:\n{}",
        daemon.log()
    );
    for call in &calls {
        assert!(
            call.input.starts_with("<hookData>\n  <network")
                && call.input.ends_with("</hookData>")
                && call.input.contains("    <name>hooknet</name>\n")
                && call.input.contains("<bridge name='kvhook0'"),
            "{}: {}",
            call.args,
            call.input
        );
        // Only stdin, stdout, stderr and the listing's own descriptor: none of the
        // daemon's sockets, taps or lock reach a script, or what it leaves running.
        assert_eq!(call.fds, "0 1 2 3", "{}: inherited descriptors", call.args);
        assert!(call.env.contains(&"LC_ALL".to_owned()), "{:?}", call.env);
        assert!(
            !call.env.iter().any(|name| name.starts_with("CARGO")),
            "the daemon's environment leaked: {:?}",
            call.env
        );
    }
    // libvirt adds the NAT port range only as the network starts: `start begin` does
    // not see it, `started` does.
    let nat_ports = "<port start='1024' end='65535'/>";
    assert!(!calls[0].input.contains(nat_ports), "{}", calls[0].input);
    assert!(calls[1].input.contains(nat_ports), "{}", calls[1].input);
    let port_created = &calls[2].input;
    assert!(
        port_created.contains("<network connections='1'>")
            && port_created.contains("  <networkport>\n    <uuid>")
            && port_created.contains(PORT_UUID)
            && port_created.contains("<mac address='52:54:00:15:00:01'/>")
            && port_created.contains("<plug type='network' bridge='kvhook0'"),
        "{port_created}"
    );
    let port_deleted = &calls[3].input;
    assert!(
        port_deleted.contains(PORT_UUID) && !port_deleted.contains("connections="),
        "the port is counted no more: {port_deleted}"
    );
    assert!(
        calls[6].input.contains("<hostname>db</hostname>"),
        "{}",
        calls[6].input
    );
}

/// A `network` script, the first to run, that fails the operation named in `gate`, with
/// a message.
fn install_gate(daemon: &Daemon) -> PathBuf {
    let gate = daemon.dirs.path().join("gate");
    std::fs::write(&gate, "").expect("gate");
    install(
        &daemon.config_dir().join("hooks/network"),
        &format!(
            "#!/bin/sh\ncat > /dev/null\n\
             if [ \"$2\" = \"$(cat {})\" ]; then echo \"refused $2 of $1\" >&2; exit 3; fi\n",
            gate.display()
        ),
    );
    gate
}

fn refusal(daemon: &Daemon, operation: &str) -> String {
    let script = daemon.config_dir().join("hooks/network");
    format!(
        "Hook script execution failed: internal error: Child process ({} hooknet {operation} begin -) \
         unexpected exit status 3: refused {operation} of hooknet",
        script.display()
    )
}

#[test]
fn a_failing_hook_script_cancels_what_libvirt_lets_it_cancel_and_leaves_nothing() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let gate = install_gate(&daemon);
    let log = install_recorder(&daemon, "network.d/90-record");
    // Not executable: skipped, as libvirt skips it.
    std::fs::write(
        daemon.config_dir().join("hooks/network.d/10-notes"),
        "notes",
    )
    .expect("notes");
    daemon.ok(&["net-define", &network_file(&daemon)]);
    let clean = |when: &str| {
        assert!(
            !daemon.bridges().contains(&"kvhook0".to_owned()),
            "{when}: bridge left"
        );
        assert!(!daemon.ruleset().contains("kvhook0"), "{when}: rules left");
        let list = daemon.ok(&["net-list", "--inactive", "--name"]);
        assert_eq!(list.trim(), "hooknet", "{when}: still inactive");
    };

    std::fs::write(&gate, "start").expect("gate");
    let error = daemon.fails(&["net-start", "hooknet"]);
    assert!(error.contains(&refusal(&daemon, "start")), "{error}");
    clean("refused start");

    // Refused once it runs: taken down again, and the DHCP lease file its server made
    // goes with it, not an older file of the other family's.
    let leases6 = daemon.state_dir().join("networks/hooknet.leases6");
    std::fs::write(&leases6, "").expect("an earlier run's DHCPv6 leases");
    std::fs::write(&gate, "started").expect("gate");
    let error = daemon.fails(&["net-start", "hooknet"]);
    assert!(error.contains(&refusal(&daemon, "started")), "{error}");
    clean("refused started");
    assert!(!daemon.state_dir().join("networks/hooknet.leases").exists());
    assert!(leases6.exists(), "an earlier run's file was deleted");
    std::fs::remove_file(&leases6).expect("remove");
    let args: Vec<String> = calls(&log).into_iter().map(|call| call.args).collect();
    assert_eq!(
        args,
        [
            "hooknet start begin -",
            "hooknet start begin -",
            "hooknet started begin -"
        ],
        "the scripts after a failing one run too"
    );

    // A refused port: no record, no tap.
    std::fs::write(&gate, "port-created").expect("gate");
    daemon.ok(&["net-start", "hooknet"]);
    let error = daemon.fails(&["net-port-create", "hooknet", &port_file(&daemon)]);
    assert!(error.contains(&refusal(&daemon, "port-created")), "{error}");
    assert_eq!(
        daemon.ok(&["net-port-list", "hooknet", "--uuid"]).trim(),
        ""
    );
    let taps = daemon.ns.sh("ip -br link show type tun").expect("ip");
    assert!(taps.trim().is_empty(), "tap left: {taps}");
    let last = calls(&log).pop().expect("calls").args;
    assert_eq!(
        last, "hooknet port-created begin -",
        "a refused port was never made"
    );

    // A refused update is reported, and stays made, as in libvirt.
    std::fs::write(&gate, "updated").expect("gate");
    let error = daemon.fails(&[
        "net-update",
        "hooknet",
        "add",
        "dns-host",
        "<host ip='192.168.150.5'><hostname>db</hostname></host>",
    ]);
    assert!(error.contains(&refusal(&daemon, "updated")), "{error}");
    assert!(
        daemon
            .ok(&["net-dumpxml", "hooknet"])
            .contains("<hostname>db</hostname>")
    );

    // What cannot be cancelled goes on, with the failure logged.
    std::fs::write(&gate, "stopped").expect("gate");
    daemon.ok(&["net-destroy", "hooknet"]);
    assert!(
        daemon.log().contains("refused stopped of hooknet"),
        "not logged"
    );
    clean("stopped");
}

/// A scripts directory that cannot be listed is the host's failure, not a script's:
/// the start is refused (a hook might have vetoed it), naming the directory and why.
#[test]
fn an_unlistable_scripts_directory_refuses_the_start_naming_it() {
    if !require(common::DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let scripts = daemon.config_dir().join("hooks/network.d");
    std::fs::create_dir_all(scripts.parent().expect("hooks dir")).expect("hooks dir");
    std::fs::write(&scripts, "not a directory").expect("network.d");
    daemon.ok(&["net-define", &network_file(&daemon)]);

    let error = daemon.fails(&["net-start", "hooknet"]);
    assert_eq!(
        error,
        format!(
            "error: Failed to start network hooknet\n\
             error: cannot open directory '{}': Not a directory\n",
            scripts.display()
        )
    );
    assert!(!daemon.bridges().contains(&"kvhook0".to_owned()));
}

#[test]
fn a_started_hook_forwards_a_host_port_to_a_guest() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // libvirt users' recipe, with nft in a table of the script's own.
    install(
        &daemon.config_dir().join("hooks/network"),
        "#!/bin/sh\n\
         [ \"$1\" = hooknet ] || exit 0\n\
         case \"$2\" in\n\
         started) nft -f - <<EOF\n\
         table ip portfwd {\n\
           chain prerouting {\n\
             type nat hook prerouting priority dstnat;\n\
             iifname up0 tcp dport 2222 dnat to 192.168.150.10:8080\n\
           }\n\
         }\n\
         EOF\n\
         ;;\n\
         stopped) nft delete table ip portfwd ;;\n\
         esac\n",
    );
    let guest = Netns::new("guest").expect("guest ns");
    let upstream = Netns::new("upstream").expect("upstream ns");
    daemon.ok(&["net-define", &network_file(&daemon)]);
    daemon.ok(&["net-start", "hooknet"]);
    attach_guest(
        &daemon,
        &guest,
        "kvhook0",
        "192.168.150.10/24",
        "192.168.150.1",
    );
    attach_upstream(&daemon, &upstream);
    wait_for_forwarding(&daemon, "vg0");

    let listener = guest
        .run(|| TcpListener::bind("192.168.150.10:8080"))
        .expect("enter guest")
        .expect("bind in guest");
    listener.set_nonblocking(true).expect("nonblocking");
    let forwarded = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 2222);
    let connected = upstream
        .run(|| TcpStream::connect_timeout(&forwarded.into(), Duration::from_secs(5)))
        .expect("enter upstream");
    assert!(
        connected.is_ok(),
        "the forwarded port is closed: {connected:?}\n{}",
        daemon.ruleset()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let peer = loop {
        match listener.accept() {
            Ok((_, peer)) => break peer,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the guest saw no connection: {e}"),
        }
    };
    assert_eq!(
        peer.ip().to_string(),
        "10.77.0.2",
        "the client's own address"
    );

    daemon.ok(&["net-destroy", "hooknet"]);
    let tables = daemon.ns.sh("nft list tables").expect("nft");
    assert!(tables.trim().is_empty(), "the stopped hook left: {tables}");
}

#[test]
fn a_daemon_killed_while_a_stopped_script_runs_finishes_the_stop_when_it_restarts() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    // A host bridge outlives the network, so a restarted daemon could take the network
    // for running.
    daemon
        .ns
        .sh("ip link add br-host type bridge && ip link set br-host up")
        .expect("host bridge");
    // Stuck: the daemon is killed meanwhile, as systemd kills one whose stop outlasts
    // its TimeoutStopSec.
    let stuck = daemon.dirs.path().join("stopped.pid");
    install(
        &daemon.config_dir().join("hooks/network"),
        &format!(
            "#!/bin/sh\ncat > /dev/null\n[ \"$2\" = stopped ] || exit 0\n\
             echo $$ > {0}.tmp && mv {0}.tmp {0}\nexec sleep 60\n",
            stuck.display()
        ),
    );
    let network = xml_file(
        daemon.dirs.path(),
        "host.xml",
        "<network><name>host</name><forward mode='bridge'/><bridge name='br-host'/></network>",
    );
    daemon.ok(&["net-define", &network.to_string_lossy()]);
    daemon.ok(&["net-start", "host"]);
    let port = xml_file(
        daemon.dirs.path(),
        "port.xml",
        &port_xml("vm1", "52:54:00:15:00:02"),
    );
    daemon.ok(&["net-port-create", "host", &port.to_string_lossy()]);
    let tap_master = |daemon: &Daemon| {
        daemon.ip_json("link show type tun")[0]["master"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(tap_master(&daemon).as_deref(), Some("br-host"));

    let mut destroy = kvnet_command(&daemon.socket())
        .args(["net-destroy", "host"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run net-destroy");
    let deadline = Instant::now() + Duration::from_secs(20);
    let script = loop {
        if let Ok(pid) = std::fs::read_to_string(&stuck) {
            break pid.trim().parse::<i32>().expect("the script's pid");
        }
        assert!(Instant::now() < deadline, "the stopped script never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    daemon.kill9();
    let _ = destroy.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script),
        nix::sys::signal::Signal::SIGKILL,
    );

    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.assert_logged("finishing a stop interrupted by a daemon crash");
    assert_eq!(
        daemon.ok(&["net-list", "--inactive", "--name"]).trim(),
        "host"
    );
    assert!(!daemon.state_dir().join("networks/host.json").exists());
    assert_eq!(
        tap_master(&daemon),
        None,
        "the port waits off the host bridge"
    );
}
