//! netns tier: the `net-port-*` verbs against a real daemon. The expected text is
//! virsh 9.0's for the same commands (`cmdNetworkPort*` in tools/virsh-network.c), the
//! taps are checked in the daemon's namespace.

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, kvnet_with_input, require, xml_file};

/// The ports these tests create: UUIDs whose byte order is not their creation order.
const LATE: &str = "7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54";
const EARLY: &str = "0ae63b5f-fe96-4af0-a7c3-da04ba1b3f54";
const OWNER: &str = "06578fc1-c686-46fa-bc2c-220893b466a6";
/// No port has this one.
const MISSING: &str = "5b7d0b5e-2d41-4c8f-9d0e-2a1c1f3e4d5a";

/// A `<networkport>` for guest `myguest`, with `extra` before `</networkport>`.
fn port_xml(uuid: Option<&str>, mac: &str, extra: &str) -> String {
    let uuid = uuid.map_or_else(String::new, |uuid| format!("  <uuid>{uuid}</uuid>\n"));
    format!(
        "<networkport>\n{uuid}  <owner>\n    <uuid>{OWNER}</uuid>\n    <name>myguest</name>\n  \
         </owner>\n  <mac address='{mac}'/>\n{extra}</networkport>\n"
    )
}

fn write(daemon: &Daemon, name: &str, xml: &str) -> PathBuf {
    xml_file(daemon.dirs.path(), name, xml)
}

/// The `<networkport>` file of the port with UUID [`LATE`] (MAC 52:54:00:7b:35:93).
fn late_port_file(daemon: &Daemon, name: &str) -> PathBuf {
    write(daemon, name, &port_xml(Some(LATE), "52:54:00:7b:35:93", ""))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8")
}

/// Exit status, stdout and stderr of `kvnet args...`.
fn run(daemon: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let out = daemon.kvnet(args);
    (
        out.status.code(),
        text(&out.stdout).to_owned(),
        text(&out.stderr).to_owned(),
    )
}

/// A failed command that ran: exit status 1, virsh's blank line on stdout, and these
/// error lines.
fn failed(stderr: &str) -> (Option<i32>, String, String) {
    (Some(1), "\n".to_owned(), stderr.to_owned())
}

/// The link `name` in the daemon's namespace, as `ip -j link show` describes it.
fn link(daemon: &Daemon, name: &str) -> Option<serde_json::Value> {
    daemon
        .ip_json("link show")
        .as_array()?
        .iter()
        .find(|link| link["ifname"] == name)
        .cloned()
}

fn tap_names(daemon: &Daemon) -> Vec<String> {
    daemon
        .ip_json("link show")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link["ifname"].as_str())
        .filter(|name| name.starts_with("vnet"))
        .map(str::to_owned)
        .collect()
}

/// virsh's port table: header, dashes, one row per UUID as given.
fn table(uuids: &[&str]) -> String {
    let dashes = if uuids.is_empty() { 7 } else { 39 };
    let rows: String = uuids.iter().map(|uuid| format!(" {uuid}\n")).collect();
    format!(" UUID\n{}\n{rows}\n", "-".repeat(dashes))
}

#[test]
fn ports_are_created_listed_dumped_and_deleted_as_virsh_shows_them() {
    if !require(&common::port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    assert_eq!(daemon.ok(&["net-port-list", "default"]), table(&[]));

    let late = late_port_file(&daemon, "late.xml");
    assert_eq!(
        daemon.ok(&["net-port-create", "default", path_str(&late)]),
        format!("Network port {LATE} created from {}\n\n", late.display())
    );
    // The tap: on the network's bridge, the guest's MAC with fe first, up.
    let tap = link(&daemon, "vnet0").expect("vnet0 exists");
    assert_eq!(tap["master"], "virbr0", "{tap}");
    assert_eq!(tap["address"], "fe:54:00:7b:35:93", "{tap}");
    let flags = tap["flags"].as_array().expect("flags");
    assert!(flags.iter().any(|flag| flag == "UP"), "{tap}");

    // The second port by `--network` and `--file`, quietly.
    let early = write(
        &daemon,
        "early.xml",
        &port_xml(Some(EARLY), "52:54:00:00:00:02", ""),
    );
    assert_eq!(
        daemon.ok(&[
            "-q",
            "net-port-create",
            "--file",
            path_str(&early),
            "--network",
            "default",
            "--validate"
        ]),
        ""
    );
    assert_eq!(
        link(&daemon, "vnet1").expect("vnet1 exists")["master"],
        "virbr0"
    );

    // Listed by UUID bytes, not in creation order; the network by name or UUID.
    let sorted = table(&[EARLY, LATE]);
    assert_eq!(daemon.ok(&["net-port-list", "default"]), sorted);
    assert_eq!(daemon.ok(&["net-port-list", "--table", "default"]), sorted);
    let net_uuid = daemon.ok(&["net-uuid", "default"]);
    let net_uuid = net_uuid.trim();
    assert_eq!(daemon.ok(&["net-port-list", net_uuid]), sorted);
    assert_eq!(
        daemon.ok(&["net-port-list", "default", "--uuid"]),
        format!("{EARLY}\n{LATE}\n\n")
    );
    assert_eq!(
        daemon.ok(&["-q", "net-port-list", "default"]),
        format!(" {EARLY}\n {LATE}\n")
    );
    assert_eq!(
        daemon.ok(&["-q", "net-port-list", "default", "--uuid"]),
        format!("{EARLY}\n{LATE}\n")
    );
    assert_eq!(
        daemon.ok(&["net-port-list", "default", "--uuid", "--json"]),
        format!("[\n  \"{EARLY}\",\n  \"{LATE}\"\n]\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["net-port-list", "default", "--json"])).expect("json");
    assert_eq!(
        json,
        serde_json::json!([
            {"uuid": EARLY, "network": "default", "owner": "myguest",
             "mac": "52:54:00:00:00:02", "tap": "vnet1", "persistent": true},
            {"uuid": LATE, "network": "default", "owner": "myguest",
             "mac": "52:54:00:7b:35:93", "tap": "vnet0", "persistent": true},
        ])
    );

    // The port's XML, with the plug the daemon gave it.
    let xml = format!(
        "<networkport>\n  <uuid>{LATE}</uuid>\n  <owner>\n    <name>myguest</name>\n    \
         <uuid>{OWNER}</uuid>\n  </owner>\n  <mac address='52:54:00:7b:35:93'/>\n  \
         <plug type='network' bridge='virbr0'/>\n</networkport>\n"
    );
    assert_eq!(
        daemon.ok(&["net-port-dumpxml", "default", LATE]),
        format!("{xml}\n")
    );
    assert_eq!(
        daemon.ok(&["net-port-dumpxml", "--port", LATE, "--network", "default"]),
        format!("{xml}\n")
    );
    assert_eq!(daemon.ok(&["-q", "net-port-dumpxml", "default", LATE]), xml);
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["net-port-dumpxml", "default", LATE, "--json"]))
            .expect("json");
    assert_eq!(json, serde_json::json!({ "xml": xml }));
    assert_eq!(
        daemon.ok(&[
            "net-port-dumpxml",
            "default",
            LATE,
            "--xpath",
            "//plug/@bridge"
        ]),
        " bridge=\"virbr0\"\n\n"
    );
    assert_eq!(
        daemon.ok(&[
            "net-port-dumpxml",
            "default",
            LATE,
            "--xpath",
            "//owner/name/text() | //mac/@address",
        ]),
        "myguest\n address=\"52:54:00:7b:35:93\"\n\n"
    );
    assert_eq!(
        daemon.ok(&[
            "net-port-dumpxml",
            "default",
            LATE,
            "--wrap",
            "--xpath",
            "//plug"
        ]),
        "<nodes>\n  <plug type=\"network\" bridge=\"virbr0\"/>\n</nodes>\n\n"
    );

    // Deleting takes the tap with it; the line names the UUID as libvirt writes it.
    assert_eq!(
        daemon.ok(&["net-port-delete", "default", LATE]),
        format!("Network port {LATE} deleted\n\n")
    );
    assert_eq!(tap_names(&daemon), ["vnet1"]);
    assert_eq!(daemon.ok(&["net-port-list", "default"]), table(&[EARLY]));
    assert_eq!(
        daemon.ok(&[
            "net-port-delete",
            "--port",
            &EARLY.to_uppercase(),
            "default"
        ]),
        format!("Network port {EARLY} deleted\n\n")
    );
    assert_eq!(tap_names(&daemon), Vec::<String>::new());
    assert_eq!(daemon.ok(&["net-port-list", "default"]), table(&[]));
    assert_eq!(daemon.ok(&["net-port-list", "default", "--uuid"]), "\n");
    assert_eq!(daemon.ok(&["net-port-list", "default", "--json"]), "[]\n");

    // A port without a UUID gets one, which the success line names.
    let anonymous = write(
        &daemon,
        "anon.xml",
        &port_xml(None, "52:54:00:00:00:03", ""),
    );
    let line = daemon.ok(&["net-port-create", "default", path_str(&anonymous)]);
    let uuid = line
        .strip_prefix("Network port ")
        .and_then(|rest| rest.strip_suffix(&format!(" created from {}\n\n", anonymous.display())))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    uuid.parse::<uuid::Uuid>().expect("a UUID");
    assert_eq!(
        daemon.ok(&["net-port-list", "default", "--uuid"]),
        format!("{uuid}\n\n")
    );
    // net-destroy leaves the ports for the network's next start; net-undefine takes them.
    let taps = tap_names(&daemon);
    daemon.ok(&["net-destroy", "default"]);
    assert_eq!(tap_names(&daemon), taps);
    daemon.ok(&["net-undefine", "default"]);
    assert_eq!(tap_names(&daemon), Vec::<String>::new());
}

#[test]
fn failures_read_as_virsh_reports_them() {
    if !require(&common::port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let good = late_port_file(&daemon, "good.xml");
    daemon.ok(&["net-port-create", "default", path_str(&good)]);

    // A port no one has, on a network that has ports.
    let missing = format!(
        "error: failed to get network port '{MISSING}'\n\
         error: network port not found: Network port with UUID {MISSING} does not exist\n"
    );
    assert_eq!(
        run(&daemon, &["net-port-dumpxml", "default", MISSING]),
        failed(&missing)
    );
    assert_eq!(
        run(&daemon, &["net-port-delete", "default", MISSING]),
        failed(&missing)
    );
    // Not a UUID.
    let malformed = "error: failed to get network port 'abc'\n\
                     error: invalid argument: invalid network port UUID 'abc'\n";
    assert_eq!(
        run(&daemon, &["net-port-delete", "default", "abc"]),
        failed(malformed)
    );
    assert_eq!(
        run(&daemon, &["net-port-dumpxml", "default", "abc"]),
        failed(malformed)
    );
    // No such network: the network is looked up first, whatever the port.
    let no_network = "error: failed to get network 'nosuch'\n\
                      error: Network not found: no network with matching name 'nosuch'\n";
    for args in [
        &["net-port-dumpxml", "nosuch", LATE][..],
        &["net-port-delete", "nosuch", "abc"],
        &["net-port-list", "nosuch"],
        &["net-port-create", "nosuch", path_str(&good)],
        &["net-port-create", "nosuch", "/nonexistent/port.xml"],
    ] {
        assert_eq!(run(&daemon, args), failed(no_network), "{args:?}");
    }

    // A network that is defined but not running has no ports.
    let off = write(
        &daemon,
        "off.xml",
        "<network>\n  <name>off</name>\n  <bridge name='virbr9'/>\n  \
         <ip address='192.168.209.1' netmask='255.255.255.0'/>\n</network>\n",
    );
    daemon.ok(&["net-define", path_str(&off)]);
    let other = write(
        &daemon,
        "other.xml",
        &port_xml(Some(EARLY), "52:54:00:00:00:02", ""),
    );
    assert_eq!(
        run(&daemon, &["net-port-create", "off", path_str(&other)]),
        failed(&format!(
            "error: Failed to create network from {}\n\
             error: Requested operation is not valid: network 'off' is not active\n",
            other.display()
        ))
    );
    assert_eq!(
        run(&daemon, &["net-port-list", "off"]),
        failed("error: Requested operation is not valid: network 'off' is not active\n")
    );
    let off_missing = format!(
        "error: failed to get network port '{LATE}'\n\
         error: network port not found: Network port with UUID {LATE} does not exist\n"
    );
    assert_eq!(
        run(&daemon, &["net-port-dumpxml", "off", LATE]),
        failed(&off_missing)
    );

    // Refused documents and files.
    let plugged = write(
        &daemon,
        "plugged.xml",
        &port_xml(
            Some(EARLY),
            "52:54:00:00:00:02",
            "  <plug type='network' bridge='virbr0'/>\n",
        ),
    );
    assert_eq!(
        run(&daemon, &["net-port-create", "default", path_str(&plugged)]),
        failed(&format!(
            "error: Failed to create network from {}\n\
             error: invalid argument: Port reclaim not requested but plug type is not none\n",
            plugged.display()
        ))
    );
    let reserved = write(
        &daemon,
        "reserved.xml",
        &port_xml(Some(EARLY), "fe:54:00:00:00:02", ""),
    );
    assert_eq!(
        run(
            &daemon,
            &["net-port-create", "default", path_str(&reserved)]
        ),
        failed(&format!(
            "error: Failed to create network from {}\n\
             error: unsupported configuration: Unable to use MAC address starting with reserved value \
             0xFE - 'fe:54:00:00:00:02'\n",
            reserved.display()
        ))
    );
    assert_eq!(
        run(
            &daemon,
            &["net-port-create", "default", "/nonexistent/port.xml"]
        ),
        failed("error: Failed to open file '/nonexistent/port.xml': No such file or directory\n")
    );
    // The same UUID twice.
    assert_eq!(
        run(&daemon, &["net-port-create", "default", path_str(&good)]),
        failed(&format!(
            "error: Failed to create network from {}\n\
             error: network port Network port with UUID {LATE} already exists exists already\n",
            good.display()
        ))
    );
    // None of that made a port or a tap.
    assert_eq!(
        daemon.ok(&["net-port-list", "default", "--uuid"]),
        format!("{LATE}\n\n")
    );
    assert_eq!(tap_names(&daemon), ["vnet0"]);

    // Command lines virsh refuses before running anything: only the error lines.
    for (args, stderr) in [
        (
            &["net-port-delete", "default"][..],
            "error: command 'net-port-delete' requires <port> option\n",
        ),
        (
            &["net-port-dumpxml", "--network", "default"],
            "error: command 'net-port-dumpxml' requires <port> option\n",
        ),
        (
            &["net-port-delete", "--port", LATE],
            "error: command 'net-port-delete' requires <network> option\n",
        ),
        (
            &["net-port-delete"],
            "error: command 'net-port-delete' requires <network> option\n\
             error: command 'net-port-delete' requires <port> option\n",
        ),
        (
            &["net-port-create", "default"],
            "error: command 'net-port-create' requires <file> option\n",
        ),
        (
            &["net-port-list"],
            "error: command 'net-port-list' requires <network> option\n",
        ),
        (
            &["net-port-delete", "default", "--port", LATE, "x"],
            "error: unexpected data 'x'\n",
        ),
        (
            &["net-port-delete", "default", LATE, "--port", LATE],
            "error: option --port already seen\n",
        ),
        (
            &["net-port-list", "default", "--name"],
            "error: command 'net-port-list' doesn't support option --name\n",
        ),
    ] {
        assert_eq!(
            run(&daemon, args),
            (Some(1), String::new(), stderr.to_owned()),
            "{args:?}"
        );
    }
    // What virsh checks when the command runs: the command's blank line follows.
    assert_eq!(
        run(&daemon, &["net-port-list", "default", "--table", "--uuid"]),
        failed("error: Only one argument from --table and --uuid may be specified.\n")
    );
    assert_eq!(
        run(
            &daemon,
            &[
                "net-port-dumpxml",
                "default",
                LATE,
                "--xpath",
                "count(//mac)"
            ]
        ),
        failed("error: internal error: Incorrect xpath 'count(//mac)'\n")
    );
    // An empty expression fails without a word, once the port is found.
    assert_eq!(
        run(&daemon, &["net-port-dumpxml", "default", LATE, "--xpath="]),
        failed("")
    );
    assert_eq!(
        run(
            &daemon,
            &["net-port-dumpxml", "default", MISSING, "--xpath="]
        ),
        failed(&missing)
    );
}

#[test]
fn command_strings_and_the_terminal_know_the_port_verbs() {
    if !require(&common::port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let path = late_port_file(&daemon, "port.xml");
    let create = format!("Network port {LATE} created from {}\n\n", path.display());

    let out = daemon.kvnet(&[&format!(
        "net-port-create default '{}'; net-port-list default --uuid",
        path.display()
    )]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("{create}{LATE}\n\n"));

    // A refused command anywhere in the string runs nothing.
    let out = daemon.kvnet(&[&format!(
        "net-port-delete default {LATE}; net-port-delete default"
    )]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: command 'net-port-delete' requires <port> option\n"
    );
    assert_eq!(tap_names(&daemon), ["vnet0"]);

    let out = kvnet_with_input(
        &daemon,
        &[],
        &format!(
            "net-port-dumpxml default {LATE} --xpath //plug/@type\nnet-port-delete default {LATE}\n"
        ),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!(
            "Welcome to kvnet, the virtualization interactive terminal.\n\n\
             Type:  'help' for help with commands\n       'quit' to quit\n\n\
             kvnet # net-port-dumpxml default {LATE} --xpath //plug/@type\n \
             type=\"network\"\n\n\
             kvnet # net-port-delete default {LATE}\n\
             Network port {LATE} deleted\n\n\
             kvnet # \n"
        )
    );
    assert_eq!(tap_names(&daemon), Vec::<String>::new());
}
