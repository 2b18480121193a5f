//! netns tier: `net-dumpxml --xpath/--wrap` against a running daemon. The expected
//! text is what virsh 9.0 prints for the same documents (src/xpath/testdata).

mod common;

use common::{DAEMON_NEEDS, Daemon, require, xml_file};

/// stdout and stderr of a run that must succeed.
fn run_ok(daemon: &Daemon, args: &[&str]) -> (String, String) {
    let out = daemon.kvnet(args);
    assert!(
        out.status.success(),
        "kvnet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

#[test]
fn xpath_selects_and_prints_nodes_as_virsh_does() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let xpath = |expr: &str| daemon.ok(&["net-dumpxml", "default", "--xpath", expr]);

    assert_eq!(xpath("//ip/@address"), " address=\"192.168.122.1\"\n\n");
    assert_eq!(xpath("//name/text()"), "default\n\n");
    assert_eq!(
        xpath("//ip"),
        "<ip address=\"192.168.122.1\" netmask=\"255.255.255.0\">\n  <dhcp>\n    \
         <range start=\"192.168.122.2\" end=\"192.168.122.254\"/>\n  </dhcp>\n</ip>\n\n"
    );
    assert_eq!(
        xpath("//bridge/@name | //ip/@netmask"),
        " name=\"virbr0\"\n netmask=\"255.255.255.0\"\n\n"
    );
    assert_eq!(xpath("//nosuch"), "\n");
    // The running definition has NAT's port range, the persistent one does not.
    assert_eq!(
        xpath("//forward"),
        "<forward mode=\"nat\">\n  <nat>\n    <port start=\"1024\" end=\"65535\"/>\n  \
         </nat>\n</forward>\n\n"
    );
    assert_eq!(
        daemon.ok(&[
            "net-dumpxml",
            "--inactive",
            "default",
            "--xpath",
            "//forward"
        ]),
        "<forward mode=\"nat\"/>\n\n"
    );
    assert_eq!(
        daemon.ok(&[
            "net-dumpxml",
            "default",
            "--xpath",
            "//ip/@address",
            "--wrap"
        ]),
        "<nodes address=\"192.168.122.1\"/>\n\n"
    );
    assert_eq!(
        daemon.ok(&[
            "net-dumpxml",
            "default",
            "--wrap",
            "--xpath",
            "//name | //ip/@address"
        ]),
        "<nodes address=\"192.168.122.1\">\n  <name>default</name>\n</nodes>\n\n"
    );
    assert_eq!(
        daemon.ok(&["-q", "net-dumpxml", "default", "--xpath", "//ip/@address"]),
        " address=\"192.168.122.1\"\n"
    );
    // --wrap alone changes nothing.
    assert_eq!(
        daemon.ok(&["net-dumpxml", "default", "--wrap"]),
        daemon.ok(&["net-dumpxml", "default"])
    );
    // In a command string, each command prints what it prints alone.
    assert_eq!(
        daemon.ok(&[
            "net-dumpxml default --xpath //name/text(); net-dumpxml default --xpath '//bridge/@stp'"
        ]),
        "default\n\n stp=\"on\"\n\n"
    );
}

#[test]
fn xpath_escapes_text_and_attributes_as_virsh_does() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let xml = "<network>\n  <name>esc</name>\n  <description>tëst &lt;x&gt; &amp; \"q\"</description>\n  \
               <bridge name='virbr7'/>\n  <dns>\n    <txt name='t' value='ü&quot;&lt;&apos;'/>\n  </dns>\n  \
               <ip address='192.168.7.1' netmask='255.255.255.0'/>\n</network>\n";
    let path = xml_file(daemon.dirs.path(), "esc.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("utf-8 path")]);
    let xpath = |expr: &str| daemon.ok(&["net-dumpxml", "esc", "--xpath", expr]);
    // Text keeps non-ASCII characters; attribute values write them as references.
    assert_eq!(
        xpath("//description/text()"),
        "tëst &lt;x&gt; &amp; \"q\"\n\n"
    );
    assert_eq!(xpath("//txt/@value"), " value=\"&#xFC;&quot;&lt;'\"\n\n");
    assert_eq!(
        xpath("//dns"),
        "<dns>\n  <txt name=\"t\" value=\"&#xFC;&quot;&lt;'\"/>\n</dns>\n\n"
    );
}

#[test]
fn xpath_failures_are_virshs() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    // Only a value that is not a node-set fails the command.
    for expr in ["string(//ip/@address)", "count(//ip)"] {
        let out = daemon.kvnet(&["net-dumpxml", "default", "--xpath", expr]);
        assert_eq!(out.status.code(), Some(1), "{expr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "\n");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("error: internal error: Incorrect xpath '{expr}'\n")
        );
    }
    // libxml2 complains about an expression it cannot compile, and virsh succeeds
    // with nothing selected.
    assert_eq!(
        run_ok(&daemon, &["net-dumpxml", "default", "--xpath", "//ip]"]),
        (
            "\n".to_owned(),
            "XPath error : Invalid expression\n//ip]\n    ^\n".to_owned()
        )
    );
    assert_eq!(
        run_ok(
            &daemon,
            &[
                "net-dumpxml",
                "default",
                "--xpath",
                "//ip[nosuch()]",
                "--wrap"
            ]
        ),
        (
            "<nodes/>\n\n".to_owned(),
            "xmlXPathCompOpEval: function nosuch not found\nXPath error : Unregistered function\n"
                .to_owned()
        )
    );
    // An empty expression fails without a word, once the network is found.
    let out = daemon.kvnet(&["net-dumpxml", "default", "--xpath", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        daemon.fails(&["net-dumpxml", "nosuch", "--xpath", ""]),
        "error: failed to get network 'nosuch'\n\
         error: Network not found: no network with matching name 'nosuch'\n"
    );
    assert_eq!(
        daemon.fails(&["net-dumpxml", "default", "--xpath"]),
        "error: expected syntax: --xpath <string>\n"
    );
}
