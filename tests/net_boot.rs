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
    }
}
