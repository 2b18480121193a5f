//! netns tier: bad input gets a clear error naming the problem, exit code 1, and
//! changes nothing: no file, no bridge, no rule.

mod common;

use common::{DAEMON_NEEDS, Daemon, Need, require, xml_file};

/// Runs a failing verb and checks the error text and that nothing changed.
fn rejects(daemon: &Daemon, args: &[&str], expected: &[&str]) {
    let files = daemon.config_snapshot();
    let bridges = daemon.bridges();
    let ruleset = daemon.ruleset();
    let err = daemon.fails(args);
    for needle in expected {
        assert!(
            err.contains(needle),
            "kvnet {args:?}: expected {needle:?} in:\n{err}"
        );
    }
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        daemon.config_snapshot(),
        files,
        "kvnet {args:?} changed the config dir"
    );
    assert_eq!(
        daemon.bridges(),
        bridges,
        "kvnet {args:?} changed the bridges"
    );
    assert_eq!(
        daemon.ruleset(),
        ruleset,
        "kvnet {args:?} changed the ruleset"
    );
}

fn define_rejects(daemon: &Daemon, xml: &str, expected: &[&str]) {
    let path = xml_file(daemon.dirs.path(), "bad.xml", xml);
    let path = path.to_str().expect("utf-8");
    rejects(
        daemon,
        &["net-define", path],
        &[&format!("Failed to define network from {path}")],
    );
    rejects(daemon, &["net-define", path], expected);
    rejects(daemon, &["net-create", path], expected);
}

#[test]
fn malformed_and_invalid_definitions_are_refused() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    // A file over virsh's 10 MiB limit is not read, as virsh refuses it.
    let huge = daemon.dirs.path().join("huge.xml");
    let mut text = String::from("<network><name>huge</name><description>");
    text.push_str(&"x".repeat(10 << 20));
    text.push_str("</description></network>");
    std::fs::write(&huge, text).expect("write");
    let huge = huge.to_str().expect("utf-8");
    assert_eq!(
        daemon.fails(&["net-define", huge]),
        format!("error: Failed to read file '{huge}': File too large\n")
    );
    // One that fits, but whose XML as written (each '"' as &quot;) would not: the
    // daemon would lose it at its next start, and virsh could not read its dump.
    define_rejects(
        &daemon,
        &format!(
            "<network><name>quotes</name><description>{}</description></network>",
            "\"".repeat(2 << 20)
        ),
        &[
            "error: invalid argument: the XML of network 'quotes' would be 1258",
            " bytes, over the 10485760-byte limit of a definition",
        ],
    );
    // One in another encoding is refused, saying so (libxml2 would convert it).
    let latin1 = daemon.dirs.path().join("latin1.xml");
    std::fs::write(
        &latin1,
        b"<?xml version='1.0' encoding='ISO-8859-1'?><network><name>caf\xe9</name></network>",
    )
    .expect("write");
    let latin1 = latin1.to_str().expect("utf-8");
    assert_eq!(
        daemon.fails(&["net-define", latin1]),
        format!("error: Failed to read file '{latin1}': it is not UTF-8 (save it as UTF-8)\n")
    );
    // The reason carries the prefix of libvirt's error class for the check, as virsh
    // prints it: "XML error: ", "unsupported configuration: ", none...
    define_rejects(
        &daemon,
        "<network><name>x</name>",
        &["\nerror: malformed network XML at line 1"],
    );
    define_rejects(
        &daemon,
        "<network><name></name></network>",
        &["\nerror: missing name information\n"],
    );
    define_rejects(&daemon, "<network><name>a/b</name></network>", &["a/b"]);
    define_rejects(&daemon, "<network><name>../x</name></network>", &["../x"]);
    define_rejects(
        &daemon,
        "<network><name>bad\u{1}name</name></network>",
        &["name"],
    );
    define_rejects(
        &daemon,
        &format!("<network><name>{}</name></network>", "n".repeat(300)),
        &["name"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip address='192.168.9.300' prefix='24'/></network>",
        &["error: XML error: Invalid address '192.168.9.300' in network 'v'"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip address='192.168.9.1' netmask='255.0.255.0'/></network>",
        &["255.0.255.0"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip address='192.168.9.1' prefix='33'/></network>",
        &["error: unsupported configuration: Invalid IPv4 prefix '33' in network 'v'"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip address='192.168.9.1' prefix='24'><dhcp><range start='192.168.10.2' end='192.168.10.9'/></dhcp></ip></network>",
        &["error: internal error: range 192.168.10.2 - 192.168.10.9"],
    );
    // DHCPv6: a range off the subnet, a host with a MAC, a DUID with a bad character.
    define_rejects(
        &daemon,
        "<network><name>v</name><ip family='ipv6' address='fd00:9::1' prefix='64'><dhcp><range start='fd00:8::10' end='fd00:8::20'/></dhcp></ip></network>",
        &["range fd00:8::10 - fd00:8::20 is not entirely within network fd00:9::1/64"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip family='ipv6' address='fd00:9::1' prefix='64'><dhcp><host mac='52:54:00:00:00:01' ip='fd00:9::5'/></dhcp></ip></network>",
        &["52:54:00:00:00:01", "IPv6 static host"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><ip family='ipv6' address='fd00:9::1' prefix='64'><dhcp><host id='0:1:x' ip='fd00:9::5'/></dhcp></ip></network>",
        &["Invalid character 'x' in id '0:1:x' of network 'v'"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><bandwidth><inbound average='1' floor='1'/></bandwidth></network>",
        &["error: unsupported configuration: floor attribute is not supported for this config"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><bandwidth><outbound average='fast'/></bandwidth></network>",
        &["could not convert bandwidth average value 'fast'"],
    );
    define_rejects(
        &daemon,
        "<network><name>v</name><bridge name='this-name-is-too-long0'/></network>",
        &["this-name-is-too-long0"],
    );
}

#[test]
fn duplicates_and_conflicts_are_refused() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let uuid = daemon.ok(&["net-uuid", "default"]);
    let uuid = uuid.trim();

    // Same name, another UUID.
    define_rejects(
        &daemon,
        "<network><name>default</name><uuid>11111111-2222-3333-4444-555555555555</uuid></network>",
        &["default", "uuid"],
    );
    // Same UUID, another name.
    define_rejects(
        &daemon,
        &format!("<network><name>other</name><uuid>{uuid}</uuid></network>"),
        &[uuid],
    );
    // A bridge name another network uses.
    define_rejects(
        &daemon,
        "<network><name>other</name><bridge name='virbr0'/></network>",
        &["virbr0", "in use"],
    );
    // A bridge name an existing interface has.
    daemon
        .ns
        .sh("ip link add hostdev0 type veth peer name hostdev0p")
        .expect("veth");
    define_rejects(
        &daemon,
        "<network><name>other</name><bridge name='hostdev0'/></network>",
        &["hostdev0"],
    );
    // net-create of a name that exists: without its UUID (a new one would be made), and
    // with it while it runs. libvirt's messages name the existing network's UUID.
    let uuid = daemon.ok(&["net-uuid", "default"]);
    let uuid = uuid.trim();
    let path = xml_file(
        daemon.dirs.path(),
        "dup.xml",
        "<network><name>default</name></network>",
    );
    rejects(
        &daemon,
        &["net-create", path.to_str().expect("path")],
        &[&format!(
            "network 'default' already exists with uuid {uuid}"
        )],
    );
    let path = xml_file(
        daemon.dirs.path(),
        "dup-uuid.xml",
        &format!("<network><name>default</name><uuid>{uuid}</uuid></network>"),
    );
    rejects(
        &daemon,
        &["net-create", path.to_str().expect("path")],
        &["network is already active as 'default'"],
    );

    // A subnet overlapping another active network: defined fine, refused at start.
    let path = xml_file(
        daemon.dirs.path(),
        "overlap.xml",
        "<network><name>overlap</name><ip address='192.168.122.129' netmask='255.255.255.128'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    rejects(
        &daemon,
        &["net-start", "overlap"],
        &["Failed to start network overlap", "192.168.122", "default"],
    );

    // Exactly the subnet of another network's bridge: libvirt's words, which tools
    // look for.
    let path = xml_file(
        daemon.dirs.path(),
        "twin.xml",
        "<network><name>twin</name><bridge name='kvtwin0'/><ip address='192.168.122.50' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    assert_eq!(
        daemon.fails(&["net-start", "twin"]),
        "error: Failed to start network twin\n\
         error: internal error: Network is already in use by interface virbr0\n"
    );

    // A firewalld zone: the definition is kept as written, the start refused by name.
    let path = xml_file(
        daemon.dirs.path(),
        "zoned.xml",
        "<network><name>zoned</name><forward/><bridge name='kvzone0' zone='trusted'/>\
         <ip address='10.22.1.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    assert!(
        daemon
            .ok(&["net-dumpxml", "zoned"])
            .contains("zone='trusted'")
    );
    rejects(
        &daemon,
        &["net-start", "zoned"],
        &["zone 'trusted' requested for network 'zoned'", "firewalld"],
    );

    // A subnet a host route uses.
    daemon.ns.sh("ip link set hostdev0p up && ip link set hostdev0 up && ip route add 10.20.0.0/16 dev hostdev0").expect("route");
    let path = xml_file(
        daemon.dirs.path(),
        "routed.xml",
        "<network><name>routed</name><ip address='10.20.1.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    rejects(&daemon, &["net-start", "routed"], &["10.20", "hostdev0"]);
    // A route to exactly the subnet wins over a wider one for libvirt's message,
    // whichever the kernel lists first.
    daemon
        .ns
        .sh("ip route add 10.20.7.0/24 dev hostdev0p")
        .expect("route");
    let path = xml_file(
        daemon.dirs.path(),
        "exact.xml",
        "<network><name>exact</name><bridge name='kvexact0'/><ip address='10.20.7.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    assert_eq!(
        daemon.fails(&["net-start", "exact"]),
        "error: Failed to start network exact\n\
         error: internal error: Network is already in use by interface hostdev0p\n"
    );

    // A bridge name some interface took after the network was defined: refused at start,
    // the interface untouched, no status left behind.
    let path = xml_file(
        daemon.dirs.path(),
        "taken.xml",
        "<network><name>taken</name><bridge name='kvtaken0'/><ip address='10.21.1.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon
        .ns
        .sh("ip link add kvtaken0 type veth peer name kvtaken0p")
        .expect("veth");
    rejects(
        &daemon,
        &["net-start", "taken"],
        &[
            "Failed to start network taken",
            "kvtaken0",
            "already in use",
        ],
    );
    let veth = daemon.ip_json("-d link show kvtaken0");
    assert_eq!(veth[0]["linkinfo"]["info_kind"], "veth", "{veth}");
    assert!(daemon.addresses("kvtaken0").is_empty());
    assert!(
        !daemon.state_dir().join("networks/taken.json").exists(),
        "status of a start that never happened"
    );
}

#[test]
fn unknown_networks_and_wrong_states_are_refused() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    for verb in [
        "net-start",
        "net-destroy",
        "net-undefine",
        "net-info",
        "net-dumpxml",
        "net-autostart",
    ] {
        let err = daemon.fails(&[verb, "nosuch"]);
        assert_eq!(
            err,
            "error: failed to get network 'nosuch'\nerror: Network not found: no network with matching name 'nosuch'\n",
            "{verb}"
        );
        // virsh ends a command it ran with a blank line, failed or not.
        assert_eq!(daemon.kvnet(&[verb, "nosuch"]).stdout, b"\n", "{verb}");
    }
    // net-name looks up UUIDs only, as virsh's does.
    assert_eq!(
        daemon.fails(&["net-name", "default"]),
        "error: failed to get network 'default'\n"
    );
    // A UUID without its dashes is not 36 characters: virsh does not look it up.
    assert_eq!(
        daemon.fails(&["net-name", "11111111222233334444555555555555"]),
        "error: failed to get network '11111111222233334444555555555555'\n"
    );
    let unknown = "11111111-2222-3333-4444-555555555555";
    assert_eq!(
        daemon.fails(&["net-name", unknown]),
        format!(
            "error: failed to get network '{unknown}'\nerror: Network not found: no network with matching uuid '{unknown}'\n"
        )
    );
    // libvirt names the UUID it looked for in lower case.
    assert_eq!(
        daemon.fails(&["net-name", "11111111-2222-3333-4444-5555555555AA"]),
        "error: failed to get network '11111111-2222-3333-4444-5555555555AA'\n\
         error: Network not found: no network with matching uuid '11111111-2222-3333-4444-5555555555aa'\n"
    );
    // Other verbs try a UUID-long argument as a UUID, then as a name, and report the
    // name (virsh's message); net-uuid looks up names only.
    assert_eq!(
        daemon.fails(&["net-info", unknown]),
        format!(
            "error: failed to get network '{unknown}'\nerror: Network not found: no network with matching name '{unknown}'\n"
        )
    );
    let uuid = daemon.ok(&["net-uuid", "default"]);
    let uuid = uuid.trim();
    assert!(
        daemon
            .ok(&["net-info", uuid])
            .starts_with("Name:           default\n")
    );
    assert_eq!(
        daemon.fails(&["net-uuid", uuid]),
        format!(
            "error: failed to get network '{uuid}'\nerror: Network not found: no network with matching name '{uuid}'\n"
        )
    );
    // A network named like another's UUID: net-uuid finds it by its name.
    let named_like_a_uuid = xml_file(
        daemon.dirs.path(),
        "uuid-named.xml",
        &format!(
            "<network><name>{uuid}</name><uuid>aaaaaaaa-2222-3333-4444-555555555555</uuid>\
             <bridge name='kvuuid0'/></network>"
        ),
    );
    daemon.ok(&["net-define", named_like_a_uuid.to_str().expect("utf-8")]);
    assert_eq!(
        daemon.ok(&["net-uuid", uuid]).trim(),
        "aaaaaaaa-2222-3333-4444-555555555555"
    );
    daemon.ok(&["net-undefine", "aaaaaaaa-2222-3333-4444-555555555555"]);
    let simple = uuid.replace('-', "");
    assert!(
        daemon
            .fails(&["net-info", &simple])
            .contains("no network with matching name")
    );
    rejects(
        &daemon,
        &["net-start", "default"],
        &[
            "Failed to start network default",
            "network is already active",
        ],
    );
    daemon.ok(&["net-destroy", "default"]);
    rejects(
        &daemon,
        &["net-destroy", "default"],
        &["network 'default' is not active"],
    );
}

#[test]
fn an_unreachable_daemon_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("nobody-home.sock");
    let out = common::kvnet_at(&socket, &["net-list"]);
    assert_eq!(out.status.code(), Some(1));
    // virsh ends a command it ran with a blank line, failed or not; this one never ran.
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot connect to kvnetd at {}: No such file or directory (is kvnetd running?)\n",
            socket.display()
        )
    );
}

#[test]
fn a_libvirt_uri_other_than_the_local_system_daemon_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet"))
        .args(["-c", "qemu+ssh://host/system", "net-list"])
        .output()
        .expect("run kvnet");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: failed to connect to the hypervisor\n\
         error: unsupported connection URI 'qemu+ssh://host/system': kvnet connects to the \
         local system daemon (qemu:///system) or to a socket path\n"
    );
}

#[test]
fn command_line_mistakes_get_virsh_lines_and_exit_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("unused.sock");
    for (args, expected) in [
        (
            &["net-start"][..],
            "error: command 'net-start' requires <network> option\n",
        ),
        (&["net-start", "a", "b"], "error: unexpected data 'b'\n"),
        (
            &["net-info", "--frob", "a"],
            "error: command 'net-info' doesn't support option --frob\n",
        ),
        (&["net-frob"], "error: unknown command: 'net-frob'\n"),
        (
            &["net-list", "--", "--all"],
            "error: unexpected data '--all'\n",
        ),
        // That -- is --xpath's value.
        (
            &["net-dumpxml", "--xpath", "--", "--foo", "n"],
            "error: command 'net-dumpxml' doesn't support option --foo\n",
        ),
        (&["exit", "3"], "error: unexpected data '3'\n"),
        (&["exit", "--help", "3"], "error: unexpected data '3'\n"),
        (
            &["net-list", "--all", "--", "--all"],
            "error: unexpected data '--all'\n",
        ),
        (
            &["net-list", "--inactive", "--inactive"],
            "error: option --inactive already seen\n",
        ),
        (
            &["net-update", "n", "add"],
            "error: command 'net-update' requires <section> option\nerror: command 'net-update' requires <xml> option\n",
        ),
        // Given by name, an argument leaves its place to the words that follow.
        (
            &["net-update", "--xml", "<h/>", "n", "add"],
            "error: command 'net-update' requires <section> option\n",
        ),
        (
            &[
                "net-update",
                "--network",
                "n",
                "add",
                "dns-host",
                "<h/>",
                "0",
                "x",
            ],
            "error: unexpected data 'x'\n",
        ),
        (&["net-list", "-a"], "error: unexpected data '-a'\n"),
        (
            &["net-list", "--name=x"],
            "error: invalid '=' after option --name\n",
        ),
        (
            &["net-define", "--file"],
            "error: expected syntax: --file <string>\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "--parent-index",
            ],
            "error: expected syntax: --parent-index <number>\n",
        ),
        (
            &["net-start", "--network", "a", "b"],
            "error: unexpected data 'b'\n",
        ),
        (
            &["net-start", "a", "--network", "b"],
            "error: option --network already seen\n",
        ),
        (
            &["net-event", "a", "lifecycle", "--event", "lifecycle"],
            "error: option --event already seen\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "--network",
                "n",
            ],
            "error: option --network already seen\n",
        ),
    ] {
        let out = common::kvnet_at(&socket, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // What virsh finds only when the command runs ends with the command's blank line:
    // an empty argument, exclusive options, a number that is not one.
    for (args, expected) in [
        (
            &["net-info", ""][..],
            "error: Failed to get option 'network': Option argument is empty\n",
        ),
        (
            &["net-dhcp-leases", "n", "--mac="],
            "error: Failed to get option 'mac': Option argument is empty\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "--parent-index=",
            ],
            "error: Numeric value '' for <parent-index> option is malformed or out of range\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "--config",
                "--current",
            ],
            "error: Options --current and --config are mutually exclusive\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "--parent-index",
                "abc",
            ],
            "error: Numeric value 'abc' for <parent-index> option is malformed or out of range\n",
        ),
        (
            &[
                "net-update",
                "n",
                "add",
                "dns-host",
                "<host/>",
                "2147483648",
            ],
            "error: Numeric value '2147483648' for <parent-index> option is malformed or out of range\n",
        ),
    ] {
        let out = common::kvnet_at(&socket, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert_eq!(out.stdout, b"\n", "{args:?}");
    }
}

#[test]
fn an_invalid_edit_changes_nothing() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let before = daemon.config_snapshot();
    let out = common::kvnet_command(&daemon.socket())
        .args(["net-edit", "default"])
        .env("EDITOR", "sed -i 's/<name>default/<name>de\\/fault/'")
        .env_remove("VISUAL")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(daemon.config_snapshot(), before);

    // A valid edit redefines.
    let out = common::kvnet_command(&daemon.socket())
        .args(["net-edit", "default"])
        .env(
            "EDITOR",
            "sed -i 's/<bridge name=.virbr0./<bridge name=\"virbr7\"/'",
        )
        .env_remove("VISUAL")
        .output()
        .expect("run");
    assert_eq!(
        common::succeeded(&out),
        "Network default XML configuration edited.\n\n"
    );
    let inactive = daemon.ok(&["net-dumpxml", "--inactive", "default"]);
    assert!(inactive.contains("<bridge name='virbr7'"), "{inactive}");
    // The running network keeps its live definition until restarted.
    assert!(
        daemon
            .ok(&["net-dumpxml", "default"])
            .contains("<bridge name='virbr0'")
    );

    // A change someone else made while the editor ran is not overwritten.
    let kvnet = format!(
        "{} -c {}",
        env!("CARGO_BIN_EXE_kvnet"),
        daemon.socket().display()
    );
    let before = daemon.config_snapshot();
    let out = common::kvnet_command(&daemon.socket())
        .args(["net-edit", "default"])
        .env(
            "EDITOR",
            format!(
                "{kvnet} net-update default add ip-dhcp-host \
                 \"<host mac='52:54:00:00:00:79' ip='192.168.122.79'/>\" --config >/dev/null; \
                 sed -i 's/<bridge name=.virbr7./<bridge name=\"virbr8\"/'"
            ),
        )
        .env_remove("VISUAL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: The XML configuration was changed by another user.\n"
    );
    let inactive = daemon.ok(&["net-dumpxml", "--inactive", "default"]);
    assert!(inactive.contains("192.168.122.79"), "{inactive}");
    assert!(inactive.contains("<bridge name='virbr7'"), "{inactive}");
    assert_ne!(daemon.config_snapshot(), before, "the update stays");

    // Nor is a network undefined meanwhile brought back.
    let path = xml_file(
        daemon.dirs.path(),
        "zeta.xml",
        "<network><name>zeta</name><bridge name='kvzeta0'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    let out = common::kvnet_command(&daemon.socket())
        .args(["net-edit", "zeta"])
        .env(
            "EDITOR",
            format!("{kvnet} net-undefine zeta >/dev/null; sed -i 's/kvzeta0/kvzeta1/'"),
        )
        .env_remove("VISUAL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: failed to get network 'zeta'\n"),
        "{err}"
    );
    assert!(
        daemon
            .fails(&["net-info", "zeta"])
            .contains("no network with matching name 'zeta'")
    );

    // On a terminal, virsh's question, each key taken as typed: here Ctrl-C (a key like
    // any other there), "?" (help), then "n" gives up; the bad edit changed nothing.
    if !require(&[Need::Program("script")]) {
        return;
    }
    let command = format!("{kvnet} net-edit default");
    let on_terminal = |editor: &str, keys: &[u8]| {
        let mut run = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run script");
        // Keys typed once the question is asked, as a user types them (before, the
        // terminal would still take Ctrl-C for a signal). The keyboard is kept until
        // kvnet ends: at the end of its input, script waits 2 s for a terminal in raw
        // mode to read what it was sent.
        let mut keyboard = run.stdin.take().expect("stdin");
        let mut screen = run.stdout.take().expect("stdout");
        let mut shown = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&shown).contains("Try again? [y,n,f,?]: ") {
            let read = std::io::Read::read(&mut screen, &mut chunk).expect("read");
            assert_ne!(read, 0, "no question: {}", String::from_utf8_lossy(&shown));
            shown.extend_from_slice(&chunk[..read]);
        }
        std::io::Write::write_all(&mut keyboard, keys).expect("keys");
        std::io::Read::read_to_end(&mut screen, &mut shown).expect("read");
        let status = run.wait().expect("wait");
        (status.code(), String::from_utf8_lossy(&shown).into_owned())
    };
    let before = daemon.config_snapshot();
    let (status, shown) = on_terminal("sed -i 's/<name>default/<name>de\\/fault/'", b"\x03?n");
    assert!(
        shown.contains("Failed. Try again? [y,n,f,?]: ")
            && shown.contains("n - no, throw away my changes"),
        "{shown}"
    );
    assert_eq!(status, Some(1), "{shown}");
    // The reason is shown once, before the question, as virsh shows it.
    assert_eq!(
        shown
            .matches("error: Failed to define network from")
            .count(),
        1,
        "{shown}"
    );
    assert_eq!(daemon.config_snapshot(), before);

    // A file saved in another encoding is a failed edit too: "y" edits the same file
    // again, the first go's change still in it.
    let editor = daemon.dirs.path().join("editor.sh");
    std::fs::write(
        &editor,
        "if [ -e \"$1.once\" ]; then sed -i '$d' \"$1\"; exit; fi\n\
         touch \"$1.once\"; sed -i 's/virbr7/virbr9/' \"$1\"; printf '<!-- \\351 -->\\n' >> \"$1\"\n",
    )
    .expect("editor");
    let (status, shown) = on_terminal(&format!("sh {}", editor.display()), b"y");
    assert!(
        shown.contains("save it as UTF-8") && shown.contains("Failed. Try again? [y,n,f,?]: "),
        "{shown}"
    );
    assert!(
        shown.contains("Network default XML configuration edited."),
        "{shown}"
    );
    assert_eq!(status, Some(0), "{shown}");
    let inactive = daemon.ok(&["net-dumpxml", "--inactive", "default"]);
    assert!(inactive.contains("<bridge name='virbr9'"), "{inactive}");
}

#[test]
fn ipv6_forwarding_is_refused_where_it_would_flush_ra_routes() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    daemon
        .ns
        .sh("ip link add uplink0 type veth peer name uplink0p && ip link set uplink0p up && ip link set uplink0 up \
             && sysctl -qw net.ipv6.conf.uplink0.accept_ra=1 \
             && ip -6 route add 2001:db8:77::/64 dev uplink0 proto ra")
        .expect("an RA-learned route");
    let path = xml_file(
        daemon.dirs.path(),
        "v6.xml",
        "<network><name>v6</name><forward mode='route'/>\
         <ip family='ipv6' address='fd00:42::1' prefix='64'/></network>",
    );
    let path = path.to_str().expect("utf-8");
    rejects(
        &daemon,
        &["net-create", path],
        &["Check the host setup: interface uplink0", "accept_ra"],
    );
    // With accept_ra=2 the kernel keeps those routes, and the network starts.
    daemon
        .ns
        .sh("sysctl -qw net.ipv6.conf.uplink0.accept_ra=2")
        .expect("accept_ra=2");
    daemon.ok(&["net-create", path]);
}

#[test]
fn a_start_that_fails_late_leaves_no_lease_journal_or_status() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Someone else holds UDP port 53 on every address: the DNS server, which starts
    // after the bridge and the DHCP server (and its lease journal), cannot bind.
    let _squatter = daemon
        .ns
        .run(|| std::net::UdpSocket::bind(("0.0.0.0", 53)))
        .expect("enter the namespace")
        .expect("bind port 53");
    let path = xml_file(
        daemon.dirs.path(),
        "late.xml",
        "<network><name>late</name><ip address='10.96.0.1' prefix='24'><dhcp><range start='10.96.0.10' end='10.96.0.20'/></dhcp></ip></network>",
    );
    let state = || {
        let mut files: Vec<_> = std::fs::read_dir(daemon.state_dir().join("networks"))
            .map(|entries| entries.map(|e| e.expect("entry").file_name()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };
    let before = state();
    rejects(
        &daemon,
        &["net-create", path.to_str().expect("path")],
        &["starting the DNS server"],
    );
    assert_eq!(
        state(),
        before,
        "a transient network that never ran left files"
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    rejects(
        &daemon,
        &["net-start", "late"],
        &["starting the DNS server"],
    );
    assert_eq!(state(), before, "a start that failed left files");
}

#[test]
fn a_bridge_name_saved_for_a_running_networks_next_start_is_taken() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let define = |file: &str, xml: &str| {
        let path = xml_file(daemon.dirs.path(), file, xml);
        daemon.ok(&["net-define", path.to_str().expect("path")]);
    };
    let uuid = "<uuid>7a1d1c3e-5f0b-4c4e-9f57-5b2f4f2a0a01</uuid>";
    define(
        "a1.xml",
        &format!(
            "<network><name>a</name>{uuid}<bridge name='bra'/><ip address='10.95.0.1' prefix='24'/></network>"
        ),
    );
    daemon.ok(&["net-start", "a"]);
    // Redefined while running: it runs on bra and will start on bra2 next time.
    define(
        "a2.xml",
        &format!(
            "<network><name>a</name>{uuid}<bridge name='bra2'/><ip address='10.95.0.1' prefix='24'/></network>"
        ),
    );
    define_rejects(
        &daemon,
        "<network><name>b</name><bridge name='bra2'/></network>",
        &["bridge name 'bra2' already in use"],
    );
    define_rejects(
        &daemon,
        "<network><name>b</name><bridge name='bra'/></network>",
        &["bridge name 'bra' already in use"],
    );
}

#[test]
fn an_ipv4_network_with_an_mtu_below_1280_starts() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Below 1280 the kernel takes IPv6 (and its sysctls) off the bridge.
    let path = xml_file(
        daemon.dirs.path(),
        "small.xml",
        "<network><name>small</name><mtu size='1279'/><ip address='10.94.0.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-create", path.to_str().expect("path")]);
    assert_eq!(daemon.addresses("virbr0"), ["10.94.0.1/24"]);
}

#[test]
fn a_read_only_client_reads_and_changes_nothing() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let file = xml_file(
        daemon.dirs.path(),
        "ro.xml",
        "<network><name>ro</name><ip address='10.57.0.1' prefix='24'/></network>",
    );
    let file = file.to_str().expect("path");
    for (args, first, api) in [
        (
            vec!["-r", "net-start", "default"],
            "Failed to start network default",
            "virNetworkCreate",
        ),
        (
            vec!["--readonly", "net-destroy", "default"],
            "Failed to destroy network default",
            "virNetworkDestroy",
        ),
        (
            vec!["-r", "net-define", file],
            "Failed to define network from",
            "virNetworkDefineXML",
        ),
        (
            vec!["-r", "net-autostart", "default", "--disable"],
            "failed to unmark network default as autostarted",
            "virNetworkSetAutostart",
        ),
    ] {
        rejects(
            &daemon,
            &args,
            &[
                first,
                &format!("error: operation forbidden: read only access prevents {api}"),
            ],
        );
    }
    let listed = daemon.ok(&["-r", "-q", "net-list", "--all"]);
    assert!(listed.contains("default"), "{listed}");
    assert!(
        daemon
            .ok(&["-r", "net-dumpxml", "default"])
            .contains("<name>default</name>")
    );
}
