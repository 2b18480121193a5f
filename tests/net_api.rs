//! netns tier: the API's access rules, checked against the peer's credentials.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{DAEMON_NEEDS, Daemon, Need, require};

/// Runs the CLI as uid/gid 65534 (nobody) with no supplementary groups.
fn kvnet_as_nobody(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    kvnet_as_nobody_in(daemon, &[], args)
}

/// Runs the CLI as uid/gid 65534 (nobody) with the supplementary `groups`.
fn kvnet_as_nobody_in(daemon: &Daemon, groups: &[u32], args: &[&str]) -> std::process::Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", &groups])
        .arg(env!("CARGO_BIN_EXE_kvnet"))
        .arg("-c")
        .arg(daemon.socket())
        .args(args)
        .output()
        .expect("run setpriv")
}

#[test]
fn strangers_may_read_but_not_change() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("setpriv")]) {
        return;
    }
    let daemon = Daemon::start();
    // The socket is 0660 root:root; an admin opening it to everyone (or a wrong group)
    // must still not let strangers change networks.
    assert_eq!(
        std::fs::metadata(daemon.socket())
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o660
    );
    // It was bound under a staging name and renamed into place; nothing of that is left.
    let staging: Vec<_> = std::fs::read_dir(daemon.dirs.path())
        .expect("dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".kvnetd.sock"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    std::fs::set_permissions(daemon.dirs.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");

    let out = kvnet_as_nobody(&daemon, &["-q", "net-list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        " default   active   yes   yes\n"
    );

    let out = kvnet_as_nobody(&daemon, &["net-destroy", "default"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access denied: uid 65534 may not change networks"),
        "{err}"
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);
}

/// The socket's group (the daemon's, root here) counts among the groups a client
/// connected with, however many it has (more than SO_PEERGROUPS' first guess).
#[test]
fn members_of_the_socket_group_may_change() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("setpriv")]) {
        return;
    }
    let daemon = Daemon::start();
    let socket_group =
        std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(daemon.socket()).expect("socket"));
    std::fs::set_permissions(daemon.dirs.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");

    let out = kvnet_as_nobody_in(&daemon, &[socket_group], &["net-destroy", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.bridges().is_empty());

    let mut many: Vec<u32> = (5000..5100).collect();
    many.push(socket_group);
    let out = kvnet_as_nobody_in(&daemon, &many, &["net-start", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);

    // Opened to everyone, the socket still lets no one else change anything.
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let out = kvnet_as_nobody_in(&daemon, &[5000, 5001], &["net-destroy", "default"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("needs root or group id {socket_group}")),
        "{err}"
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);
}

/// A client that sends half a request and then nothing holds a connection the graceful
/// shutdown would wait for forever: the daemon closes it after a grace period, and stops.
#[test]
fn a_stuck_client_does_not_keep_the_daemon_from_stopping() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let mut stuck = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect");
    std::io::Write::write_all(
        &mut stuck,
        b"POST /v1/networks HTTP/1.1\r\nhost: kvnetd\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"xml\":",
    )
    .expect("half a request");
    // The request is being read once the daemon answers others.
    daemon.ok(&["net-list"]);
    let started = std::time::Instant::now();
    daemon.stop();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "stopped after {:?}",
        started.elapsed()
    );
    daemon.assert_logged("closing them");
}
