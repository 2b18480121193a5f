//! netns tier: network boot. A guest's DHCP client learns the `<bootp>` file and server
//! from the lease, as PXE firmware would from libvirt's dnsmasq (`dhcp-boot`).

mod common;

use common::{DAEMON_NEEDS, Daemon, Need, Netns, attach_guest, require, wait_for_forwarding};

#[test]
fn guests_learn_the_boot_file_and_server_from_their_lease() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    for (bootp, server) in [
        ("<bootp file='pxelinux.0' server='10.58.0.5'/>", "10.58.0.5"),
        // Without a server, the bridge's own address, as dnsmasq does.
        ("<bootp file='pxelinux.0'/>", "10.58.0.1"),
    ] {
        let xml = format!(
            "<network><name>pxe</name><bridge name='kvpxe' stp='off'/>\
             <ip address='10.58.0.1' prefix='24'><dhcp>\
             <range start='10.58.0.10' end='10.58.0.20'/>{bootp}</dhcp></ip></network>"
        );
        let path = common::xml_file(daemon.dirs.path(), "pxe.xml", &xml);
        daemon.ok(&["net-create", path.to_str().expect("path")]);
        let guest = Netns::new("pxeguest").expect("guest ns");
        attach_guest(&daemon, &guest, "kvpxe", "", "");
        wait_for_forwarding(&daemon, "vg0");
        let bound = common::udhcpc_lease(&daemon, &guest, "pxe1");
        assert_eq!(
            [bound.boot_file.as_str(), bound.siaddr.as_str()],
            ["pxelinux.0", server],
            "{bound:?}"
        );
        daemon.ok(&["net-destroy", "pxe"]);
        // The guest's namespace, and the veth with it, goes away in the background.
        daemon.ns.sh("ip link del vg0").ok();
    }
}

#[test]
fn guests_fetch_files_from_the_tftp_root_and_nothing_outside_it() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Served only beneath directories every user may pass through, as dnsmasq, an
    // unprivileged user under libvirt, would be able to.
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    let root = daemon.dirs.path().join("tftproot");
    std::fs::create_dir_all(root.join("boot")).expect("root");
    std::fs::create_dir_all(root.join("locked")).expect("locked dir");
    std::fs::write(root.join("locked/readable"), b"secret").expect("file in locked dir");
    chmod(&root.join("locked"), 0o700);
    let fifo = root.join("fifo");
    std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    // Sizes around the block boundaries: one short block, exactly two blocks (an empty
    // third one ends the transfer), and many.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("pxelinux.0", b"tiny".to_vec()),
        ("boot/exact", (0..1024u32).map(|i| i as u8).collect()),
        ("boot/big", (0..300_000u32).map(|i| (i * 7) as u8).collect()),
    ];
    for (name, content) in &files {
        std::fs::write(root.join(name), content).expect("file");
    }
    std::fs::write(daemon.dirs.path().join("secret"), b"secret").expect("secret");
    std::os::unix::fs::symlink("../secret", root.join("escape")).expect("symlink");
    std::fs::write(root.join("private"), b"secret").expect("private");
    chmod(&root.join("private"), 0o600);
    let xml = format!(
        "<network><name>pxe</name><bridge name='kvtftp' stp='off'/>\
         <ip address='10.60.0.1' prefix='24'><tftp root='{}'/><dhcp>\
         <range start='10.60.0.10' end='10.60.0.20'/><bootp file='pxelinux.0'/></dhcp></ip></network>",
        root.display()
    );
    let path = common::xml_file(daemon.dirs.path(), "pxe.xml", &xml);
    daemon.ok(&["net-create", path.to_str().expect("path")]);
    let guest = Netns::new("tftpguest").expect("guest ns");
    attach_guest(&daemon, &guest, "kvtftp", "10.60.0.50/24", "10.60.0.1");
    wait_for_forwarding(&daemon, "vg0");

    let local = daemon.dirs.path().join("fetched");
    for (name, content) in &files {
        for block_size in ["", "-b 1468"] {
            let _ = std::fs::remove_file(&local);
            guest
                .sh(&format!(
                    "busybox tftp -g {block_size} -r {name} -l {} 10.60.0.1",
                    local.display()
                ))
                .unwrap_or_else(|e| panic!("tftp get {name} {block_size}: {e}"));
            assert_eq!(
                &std::fs::read(&local).expect("fetched"),
                content,
                "{name} {block_size}"
            );
        }
    }
    for outside in [
        "../secret",
        "escape",
        "/../secret",
        "boot",
        "missing",
        "private",
        "locked/readable",
        "fifo",
    ] {
        let _ = std::fs::remove_file(&local);
        let fetched = guest.sh(&format!(
            "busybox tftp -g -r {outside} -l {} 10.60.0.1",
            local.display()
        ));
        assert!(fetched.is_err(), "{outside} was served");
        assert!(
            std::fs::read(&local).map_or(true, |got| got != b"secret"),
            "{outside} leaked the file outside the root"
        );
    }

    // One guest holds at most 8 transfers at once (here, requests it never
    // acknowledges); the ninth is refused, and another guest is still served.
    guest
        .sh("ip addr add 10.60.0.51/24 dev eth0")
        .expect("second address");
    let first_replies = |source: &str, count: usize| -> Vec<u16> {
        let source = source.to_owned();
        guest
            .run(move || {
                let sockets: Vec<std::net::UdpSocket> = (0..count)
                    .map(|_| std::net::UdpSocket::bind((source.as_str(), 0)).expect("bind"))
                    .collect();
                for socket in &sockets {
                    socket
                        .send_to(b"\x00\x01pxelinux.0\x00octet\x00", "10.60.0.1:69")
                        .expect("read request");
                    // One at a time, so the server sees them in order.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                sockets
                    .iter()
                    .map(|socket| {
                        socket
                            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                            .expect("timeout");
                        let mut reply = [0u8; 600];
                        let len = socket.recv(&mut reply).expect("reply");
                        assert!(len >= 2, "short reply");
                        u16::from_be_bytes([reply[0], reply[1]])
                    })
                    .collect()
            })
            .expect("enter guest")
    };
    const DATA: u16 = 3;
    const ERROR: u16 = 5;
    let mut expected = vec![DATA; 8];
    expected.push(ERROR);
    assert_eq!(first_replies("10.60.0.50", 9), expected);
    assert_eq!(first_replies("10.60.0.51", 1), [DATA]);

    // Only this network's guests are answered: not a guest of another network routing
    // to the address, nor a guest spoofing an outside address to have the file sent
    // there (both were served before).
    let other_xml = "<network><name>other</name><bridge name='kvtftp2' stp='off'/>\
                     <forward/><ip address='10.60.1.1' prefix='24'/></network>";
    let other_path = common::xml_file(daemon.dirs.path(), "other.xml", other_xml);
    daemon.ok(&["net-create", other_path.to_str().expect("path")]);
    let neighbour = Netns::new("tftpother").expect("other guest ns");
    daemon
        .ns
        .sh(&format!(
            "ip link add vg1 type veth peer name eth0 netns {} && \
             ip link set vg1 master kvtftp2 && ip link set vg1 up",
            neighbour.name()
        ))
        .expect("veth to the other guest");
    neighbour
        .sh(
            "ip link set eth0 up && ip addr add 10.60.1.50/24 dev eth0 && \
             ip route add default via 10.60.1.1",
        )
        .expect("other guest addressing");
    wait_for_forwarding(&daemon, "vg1");
    guest
        .sh("ip addr add 203.0.113.50/32 dev eth0")
        .expect("an outside address");
    for (ns, source) in [(&neighbour, "10.60.1.50"), (&guest, "203.0.113.50")] {
        let source = source.to_owned();
        let answered = ns
            .run(move || {
                let socket = std::net::UdpSocket::bind((source.as_str(), 0)).expect("bind");
                socket
                    .send_to(b"\x00\x01pxelinux.0\x00octet\x00", "10.60.0.1:69")
                    .expect("read request");
                socket
                    .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .expect("timeout");
                socket.recv(&mut [0u8; 600]).is_ok()
            })
            .expect("enter namespace");
        assert!(!answered, "a request from {} was answered", ns.name());
    }
    daemon.ok(&["net-destroy", "other"]);
    daemon.ok(&["net-destroy", "pxe"]);
}

#[test]
fn a_tftp_root_missing_or_out_of_others_reach_fails_the_start_and_leaves_nothing() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Beneath a private directory, nothing is anyone's to read.
    let locked = daemon.dirs.path().join("locked");
    std::fs::create_dir_all(locked.join("root")).expect("root");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    for (root, why) in [
        (
            daemon.dirs.path().join("no-such-root"),
            "No such file".to_owned(),
        ),
        (
            locked.join("root"),
            format!("{} is not world-searchable", locked.display()),
        ),
    ] {
        let xml = format!(
            "<network><name>pxe</name><bridge name='kvtftp' stp='off'/>\
             <ip address='10.61.0.1' prefix='24'><tftp root='{}'/></ip></network>",
            root.display()
        );
        let path = common::xml_file(daemon.dirs.path(), "pxe.xml", &xml);
        daemon.ok(&["net-define", path.to_str().expect("path")]);
        let error = daemon.fails(&["net-start", "pxe"]);
        assert!(
            error.contains("starting the TFTP server")
                && error.contains(&root.display().to_string())
                && error.contains(&why),
            "{error}"
        );
        assert!(daemon.bridges().is_empty(), "{:?}", daemon.bridges());
        assert!(!daemon.ruleset().contains("kvtftp"));
        daemon.ok(&["net-undefine", "pxe"]);
    }
}

/// Backslashes (Windows boot loaders' separator) and a full path under the root (a
/// `<bootp file=>` written so, which the DHCP reply hands out as it is) name files in
/// the root, as with dnsmasq. A file of more blocks than the 16-bit block number counts
/// ends cleanly when its last block's number wraps to 0: no stray block after it.
#[test]
fn windows_and_full_paths_are_served_and_a_wrapped_block_number_ends_the_transfer() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let root = daemon.dirs.path().join("tftproot");
    std::fs::create_dir_all(root.join("Boot")).expect("root");
    std::fs::write(root.join("Boot/BCD"), b"bcd").expect("file");
    std::fs::write(root.join("pxelinux.0"), b"pxe").expect("file");
    // Block size 8: 65535 full blocks, then 4 bytes in block 65536, numbered 0.
    let big: Vec<u8> = (0..65_535u32 * 8 + 4).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big"), &big).expect("big file");
    let xml = format!(
        "<network><name>pxe</name><bridge name='kvtftp' stp='off'/>\
         <ip address='10.61.0.1' prefix='24'><tftp root='{}'/></ip></network>",
        root.display()
    );
    let path = common::xml_file(daemon.dirs.path(), "pxe.xml", &xml);
    daemon.ok(&["net-create", path.to_str().expect("path")]);
    let guest = Netns::new("tftpguest").expect("guest ns");
    attach_guest(&daemon, &guest, "kvtftp", "10.61.0.50/24", "10.61.0.1");
    wait_for_forwarding(&daemon, "vg0");

    let full_path = format!("{}/pxelinux.0", root.display());
    let (small_files, (received, stray)) = guest
        .run(move || {
            let socket = std::net::UdpSocket::bind("10.61.0.50:0").expect("bind");
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut reply = [0u8; 600];
            // Each a one-block transfer without options.
            let mut small = Vec::new();
            for name in ["\\Boot\\BCD", full_path.as_str()] {
                let request = [&[0, 1][..], name.as_bytes(), b"\0octet\0"].concat();
                socket.send_to(&request, "10.61.0.1:69").expect("request");
                let (len, from) = socket.recv_from(&mut reply).expect("reply");
                socket.send_to(&[0, 4, 0, 1], from).expect("ack");
                small.push(reply[..len].to_vec());
            }
            socket
                .send_to(b"\x00\x01big\x00octet\x00blksize\x008\x00", "10.61.0.1:69")
                .expect("request");
            let (_, server) = socket.recv_from(&mut reply).expect("option ack");
            assert_eq!(&reply[..2], [0, 6], "an option acknowledgement");
            socket.connect(server).expect("connect");
            socket.send(&[0, 4, 0, 0]).expect("ack 0");
            let mut received = Vec::new();
            loop {
                let len = socket.recv(&mut reply).expect("data");
                assert_eq!(&reply[..2], [0, 3], "a data block");
                received.extend_from_slice(&reply[4..len]);
                socket.send(&[0, 4, reply[2], reply[3]]).expect("ack");
                if len - 4 < 8 {
                    break;
                }
            }
            socket
                .set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .expect("timeout");
            let stray = socket
                .recv(&mut reply)
                .ok()
                .map(|len| reply[..len].to_vec());
            (small, (received, stray))
        })
        .expect("enter the guest");
    assert_eq!(
        small_files,
        [
            b"\x00\x03\x00\x01bcd".to_vec(),
            b"\x00\x03\x00\x01pxe".to_vec()
        ]
    );
    assert!(
        received == big,
        "the big file came back different ({} bytes)",
        received.len()
    );
    assert_eq!(stray, None, "a block after the last one");
    daemon.ok(&["net-destroy", "pxe"]);
}
