//! Shared pieces of the integration tests: a kvnetd running inside a throw-away
//! network namespace with its own temp dirs and socket, and the CLI pointed at it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use std::time::Instant;

pub use testkit::{Need, Netns, require};

/// The needs of every test that runs a daemon.
pub const DAEMON_NEEDS: &[Need] = &[Need::Root, Need::Netns, Need::Nft];

/// A kvnetd under test. Dropping it kills the daemon; the namespace and dirs go with
/// their own guards.
#[derive(Debug)]
pub struct Daemon {
    pub ns: Netns,
    pub dirs: tempfile::TempDir,
    child: Option<Child>,
}

/// Options for starting a daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    pub no_default_network: bool,
    /// Use this state dir instead of `<dirs>/run` (a "reboot" starts from a new one).
    pub state_dir: Option<PathBuf>,
    /// `NOTIFY_SOCKET`, as systemd sets it for a `Type=notify` unit.
    pub notify_socket: Option<PathBuf>,
    /// `--resolv-conf`: the host resolvers the daemon forwards to. By default, an empty
    /// file of the test's own: this machine's resolvers mean nothing in a test's namespace.
    pub resolv_conf: Option<PathBuf>,
    /// `--hosts-file`: names served to every guest. By default none (`--no-hosts`), so
    /// no answer depends on this machine's /etc/hosts.
    pub hosts_file: Option<PathBuf>,
    /// Run the daemon with only these capabilities (`setpriv` names: `net_admin`, ...)
    /// and no new privileges, as a systemd unit's `CapabilityBoundingSet=` and
    /// `NoNewPrivileges=` confine a root service.
    pub capabilities: Option<Vec<String>>,
    /// Start the daemon with descriptor 7 open and inheritable, as a careless parent
    /// might leave one.
    pub inherited_fd: bool,
    /// `--no-read-only-socket`.
    pub no_read_only_socket: bool,
}

impl DaemonOptions {
    /// A daemon that defines no network of its own.
    pub fn no_default_network() -> DaemonOptions {
        DaemonOptions {
            no_default_network: true,
            ..Default::default()
        }
    }
}

impl Daemon {
    /// A daemon in a new namespace, with libvirt's `default` network defined (first start).
    pub fn start() -> Daemon {
        Daemon::start_with(DaemonOptions::default())
    }

    /// A daemon in a new namespace that defines no network of its own.
    pub fn without_default_network() -> Daemon {
        Daemon::start_with(DaemonOptions::no_default_network())
    }

    pub fn start_with(options: DaemonOptions) -> Daemon {
        let ns = Netns::new("kvnetd").expect("create the test namespace");
        let dirs = tempfile::tempdir().expect("temp dir");
        let mut daemon = Daemon {
            ns,
            dirs,
            child: None,
        };
        daemon.spawn(&options);
        daemon
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dirs.path().join("etc")
    }

    /// `--libvirt-leases-dir`: libvirt's dnsmasq's lease files, as the test writes them
    /// (none at first).
    pub fn libvirt_leases_dir(&self) -> PathBuf {
        self.dirs.path().join("libvirt-dnsmasq")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dirs.path().join("run")
    }

    pub fn socket(&self) -> PathBuf {
        self.dirs.path().join("kvnetd.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dirs.path().join("kvnetd.log")
    }

    /// The daemon's log so far (for assertions and failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Asserts the daemon's log holds `text`, showing the log if not.
    pub fn assert_logged(&self, text: &str) {
        let log = self.log();
        assert!(log.contains(text), "{text:?} not logged:\n{log}");
    }

    /// Starts (or restarts) the daemon process with the same dirs.
    pub fn spawn(&mut self, options: &DaemonOptions) {
        self.launch(options);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "kvnetd exited with {status} before listening; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kvnetd did not listen within 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts kvnetd without waiting for it to listen (it listens once its networks are
    /// adopted and autostarted).
    pub fn launch(&mut self, options: &DaemonOptions) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| self.state_dir());
        let mut cmd = match &options.capabilities {
            None if options.inherited_fd => {
                let mut cmd = self.ns.command("sh");
                cmd.args(["-c", "exec 7</dev/null; exec \"$0\" \"$@\""])
                    .arg(env!("CARGO_BIN_EXE_kvnetd"));
                cmd
            }
            None => self.ns.command(env!("CARGO_BIN_EXE_kvnetd")),
            Some(capabilities) => {
                let kept: Vec<String> = capabilities.iter().map(|cap| format!("+{cap}")).collect();
                let mut cmd = self.ns.command("setpriv");
                cmd.arg(format!("--bounding-set=-all,{}", kept.join(",")))
                    .args(["--inh-caps=-all", "--no-new-privs"])
                    .arg(env!("CARGO_BIN_EXE_kvnetd"));
                cmd
            }
        };
        cmd.arg("--config-dir")
            .arg(self.config_dir())
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--socket")
            .arg(self.socket())
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if options.no_read_only_socket {
            cmd.arg("--no-read-only-socket");
        }
        if options.no_default_network {
            cmd.arg("--no-default-network");
        }
        if let Some(socket) = &options.notify_socket {
            cmd.env("NOTIFY_SOCKET", socket);
        }
        let resolv_conf = options.resolv_conf.clone().unwrap_or_else(|| {
            let path = self.dirs.path().join("no-resolvers.conf");
            std::fs::write(&path, "").expect("write an empty resolv.conf");
            path
        });
        cmd.arg("--resolv-conf").arg(resolv_conf);
        match &options.hosts_file {
            Some(path) => cmd.arg("--hosts-file").arg(path),
            None => cmd.arg("--no-hosts"),
        };
        // The test's own: what libvirt left on this machine means nothing to a test.
        cmd.arg("--libvirt-leases-dir")
            .arg(self.libvirt_leases_dir());
        self.child = Some(cmd.spawn().expect("spawn kvnetd"));
    }

    /// The daemon's pid (`ip netns exec`, and `setpriv`, exec it, so the child's pid is
    /// the daemon's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the daemon with SIGTERM, as systemd does (networks stay up), and waits for it. One still running a minute later
    /// is killed and fails the test, with its log: a stop must not hang.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("kvnetd still ran 60 s after SIGTERM; log:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `kvnet -c <socket> args...` from the root namespace (the socket is a file).
    pub fn kvnet(&self, args: &[&str]) -> Output {
        kvnet_at(&self.socket(), args)
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kvnet(args);
        assert!(
            out.status.success(),
            "kvnet {args:?} failed: {}\nstdout: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs the CLI and asserts it fails with exit code 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kvnet(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kvnet {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// `ip -j ...` inside the namespace, parsed.
    pub fn ip_json(&self, args: &str) -> serde_json::Value {
        let out = self.ns.sh(&format!("ip -j {args}")).expect("ip -j");
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Array(Vec::new()))
    }

    /// Names of the bridges in the namespace.
    pub fn bridges(&self) -> Vec<String> {
        let links = self.ip_json("link show type bridge");
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    }

    /// `addr/prefix` strings of an interface.
    pub fn addresses(&self, ifname: &str) -> Vec<String> {
        let addrs = self.ip_json(&format!("addr show dev {ifname}"));
        addrs
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect()
    }

    /// `nft -s list ruleset` inside the namespace (text form, for readable assertions).
    pub fn ruleset(&self) -> String {
        // Stateless: counters move whenever the bridge's own multicast passes, so two
        // listings of the same rules could differ.
        self.ns.sh("nft -s list ruleset").expect("nft list ruleset")
    }

    /// The files under the config dir, with contents: to prove a failed call changed nothing.
    pub fn config_snapshot(&self) -> Vec<(PathBuf, String)> {
        snapshot(&self.config_dir())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The stdout of a command that must have succeeded (its stderr in the failure).
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI against a socket.
pub fn kvnet_at(socket: &Path, args: &[&str]) -> Output {
    kvnet_command(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvnet")
}

/// `kvnet -c <socket>`, for a test to add arguments and stdio to.
pub fn kvnet_command(socket: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvnet"));
    command.arg("-c").arg(socket).env_remove("KVNET_SOCKET");
    command
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            files.extend(snapshot(&path));
        } else if meta.file_type().is_symlink() {
            files.push((
                path.clone(),
                format!(
                    "-> {}",
                    std::fs::read_link(&path).expect("readlink").display()
                ),
            ));
        } else {
            files.push((
                path.clone(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    files.sort();
    files
}

/// Writes an XML file for a test and returns its path.
/// Whether a link from `ip -j link show` is administratively up.
pub fn is_up(link: &serde_json::Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|flag| flag == "UP"))
}

pub fn xml_file(dir: &Path, name: &str, xml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, xml).expect("write xml");
    path
}

/// Wires `peer` to `daemon`'s namespace: a veth whose host end is on `bridge`, the
/// peer end addressed `addr` with a default route via `gateway` (no address when
/// `addr` is empty: the guest will ask DHCP).
pub fn attach_guest(daemon: &Daemon, guest: &Netns, bridge: &str, addr: &str, gateway: &str) {
    daemon
        .ns
        .sh(&format!(
            "ip link add vg0 type veth peer name eth0 netns {} && ip link set vg0 master {bridge} && ip link set vg0 up",
            guest.name()
        ))
        .expect("veth to guest");
    guest.sh("ip link set eth0 up").expect("guest link up");
    if !addr.is_empty() {
        guest
            .sh(&format!(
                "ip addr add {addr} dev eth0 && ip route add default via {gateway}"
            ))
            .expect("guest addressing");
    }
}

/// An "upstream" namespace at 10.77.0.2, reachable from the daemon's namespace via 10.77.0.1.
pub fn attach_upstream(daemon: &Daemon, upstream: &Netns) {
    daemon
        .ns
        .sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {} && ip addr add 10.77.0.1/24 dev up0 && ip link set up0 up",
            upstream.name()
        ))
        .expect("veth to upstream");
    upstream
        .sh("ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up")
        .expect("upstream addressing");
}

/// Runs `kvnet -c SOCKET args...` with `input` on its stdin.
pub fn kvnet_with_input(daemon: &Daemon, args: &[&str], input: &str) -> Output {
    let mut child = kvnet_command(&daemon.socket())
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

/// Waits until a bridge port is forwarding (STP on: listening + learning first).
pub fn wait_for_forwarding(daemon: &Daemon, port: &str) {
    for _ in 0..100 {
        let state = daemon
            .ns
            .sh(&format!("cat /sys/class/net/{port}/brport/state"))
            .unwrap_or_default();
        // BR_STATE_FORWARDING
        if state.trim() == "3" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("bridge port {port} never reached forwarding");
}

/// What busybox udhcpc was handed when it bound a lease.
#[derive(Debug)]
pub struct Bound {
    pub ip: String,
    pub router: String,
    pub dns: String,
    pub domain: String,
    /// The hostname option (12) of the ACK; empty when there was none.
    pub hostname: String,
    /// The ACK's `file` field (network boot); empty when there was none.
    pub boot_file: String,
    /// The ACK's `siaddr` (the boot server); empty when there was none.
    pub siaddr: String,
}

/// Runs busybox udhcpc in `guest` on eth0 (sending `hostname`) until it binds, puts the
/// leased address on eth0 so the guest can talk to the bridge, and returns what it got.
pub fn udhcpc_lease(daemon: &Daemon, guest: &Netns, hostname: &str) -> Bound {
    let script = daemon
        .dirs
        .path()
        .join(format!("udhcpc-{}.sh", guest.name()));
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/$mask\" dev \"$interface\"\n\
         echo \"$ip|$router|$dns|$domain|$hostname|$boot_file|$siaddr\" > \"$0.out\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    guest
        .sh(&format!(
            "busybox udhcpc -i eth0 -n -q -f -T 1 -t 5 -x hostname:{hostname} -s {}",
            script.display()
        ))
        .expect("udhcpc got no lease");
    let bound = std::fs::read_to_string(format!("{}.out", script.display())).expect("bound");
    let fields: Vec<&str> = bound.trim().split('|').collect();
    let [ip, router, dns, domain, hostname, boot_file, siaddr] = fields[..] else {
        panic!("unexpected udhcpc record {bound:?}")
    };
    Bound {
        ip: ip.to_owned(),
        router: router.to_owned(),
        dns: dns.to_owned(),
        domain: domain.to_owned(),
        hostname: hostname.to_owned(),
        boot_file: boot_file.to_owned(),
        siaddr: siaddr.to_owned(),
    }
}

/// Length of the virtio-net header before every frame on a port's tap or macvtap queue.
pub const VNET_HDR_LEN: usize = 12;

/// An ARP request (a broadcast) from `mac` at `sender` for `target`, after the virtio-net
/// header: what a guest writes to its tap or macvtap.
pub fn arp_request(mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&sender);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

/// Whether `frame` (without its virtio-net header) is `from`'s ARP reply to `mac`.
pub fn is_arp_reply(frame: &[u8], mac: [u8; 6], from: [u8; 4]) -> bool {
    frame.len() >= 42
        && frame[..6] == mac
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == from
}

/// Reads frames from a tap or macvtap queue until one (without its virtio-net header)
/// satisfies `wanted`, for at most `timeout`, calling `send` first and every 200 ms.
pub fn receives(
    queue: &std::os::fd::OwnedFd,
    timeout: Duration,
    send: impl Fn(),
    wanted: impl Fn(&[u8]) -> bool,
) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 2048];
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            send();
            next_send = Instant::now() + Duration::from_millis(200);
        }
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u16)).expect("poll") == 0 {
            continue;
        }
        let n = nix::unistd::read(queue, &mut buffer).expect("read the queue");
        if wanted(&buffer[VNET_HDR_LEN.min(n)..n]) {
            return true;
        }
    }
    false
}

/// [`receives`] without sending anything.
pub fn wait_for_frame(
    queue: &std::os::fd::OwnedFd,
    timeout: Duration,
    wanted: impl Fn(&[u8]) -> bool,
) -> bool {
    receives(queue, timeout, || {}, wanted)
}

/// The needs of a test that makes network ports (taps).
pub fn port_needs() -> Vec<Need> {
    let mut needs = DAEMON_NEEDS.to_vec();
    needs.push(Need::Tun);
    needs
}

/// A `<networkport>` for a guest `owner`'s NIC with `mac`.
pub fn port_xml(owner: &str, mac: &str) -> String {
    format!(
        "<networkport>\n  <owner>\n    <name>{owner}</name>\n    \
         <uuid>c0b6a7f5-4deb-4cf6-b4e7-eab4e3aafd4c</uuid>\n  </owner>\n  \
         <mac address='{mac}'/>\n</networkport>\n"
    )
}

/// The API error a call failed with; any other outcome fails the test.
pub fn api_error(
    result: Result<impl std::fmt::Debug, netd::api::client::Error>,
) -> (netd::api::ErrorKind, String) {
    match result {
        Err(netd::api::client::Error::Api(e)) => (e.kind, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The link-local address the kernel gives an interface with MAC `mac` by default.
pub fn eui64_link_local(mac: &str) -> Option<std::net::Ipv6Addr> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, e, f] = <[u8; 6]>::try_from(bytes).ok()?;
    Some(std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([a ^ 0x02, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    ))
}
