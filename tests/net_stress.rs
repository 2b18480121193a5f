//! netns tier: consistency under concurrency and interruption. Several clients run a
//! seeded random mix of changes over a few networks that share bridge names and subnets
//! (so they conflict), some clients are killed mid-request, some raw requests are closed
//! right after they are sent, and once the daemon itself is killed mid-storm. Guests'
//! ports come and go on the networks too. At every quiet moment, and after every
//! restart, the kernel (bridges, addresses, kvnet's nft table, DNS listeners, port taps
//! and what they are plugged into), the state dir, the config dir and `net-list --all`
//! must agree.
//!
//! `KVNET_STRESS_SEED=N` replays a run; the seed is printed at the start.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, DaemonOptions, require};

/// Network names: the first four are defined and started, the last two only created.
const NAMES: &[&str] = &["sa", "sb", "sc", "sd", "ta", "tb"];
/// Bridge names the networks share (`None`: let the daemon pick a `virbrN`).
const BRIDGES: &[Option<&str>] = &[Some("kvsa"), Some("kvsb"), Some("kvsc"), None];
/// Third octets of the 10.77.N.0/24 subnets the networks share.
const SUBNETS: &[u8] = &[1, 2, 3];
const MODES: &[&str] = &["<forward/>", "", "<forward mode='route'/>"];

const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 60;
const STORM: Duration = Duration::from_secs(3);

/// splitmix64: small, seedable, good enough to pick operations.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn network_xml(rng: &mut Rng, name: &str) -> String {
    let bridge = rng
        .pick(BRIDGES)
        .map(|b| format!("<bridge name='{b}'/>"))
        .unwrap_or_default();
    let octet = rng.pick(SUBNETS);
    let mode = rng.pick(MODES);
    let dhcp = if rng.chance(50) {
        format!("<dhcp><range start='10.77.{octet}.100' end='10.77.{octet}.200'/></dhcp>")
    } else {
        String::new()
    };
    // Some networks also serve DHCPv6 (and advertise it) on an IPv6 subnet.
    let ipv6 = if rng.chance(30) {
        format!(
            "<ip family='ipv6' address='fd77:{octet}::1' prefix='64'><dhcp>\
             <range start='fd77:{octet}::100' end='fd77:{octet}::1ff'/></dhcp></ip>"
        )
    } else {
        String::new()
    };
    // Some are shaped, which gives their bridge an IFB device when outbound is limited.
    let bandwidth = match rng.below(4) {
        0 => "<bandwidth><inbound average='1000'/><outbound average='500'/></bandwidth>",
        1 => "<bandwidth><outbound average='200' burst='64'/></bandwidth>",
        _ => "",
    };
    format!(
        "<network><name>{name}</name>{bridge}{mode}{bandwidth}\
         <ip address='10.77.{octet}.1' prefix='24'>{dhcp}</ip>{ipv6}</network>"
    )
}

/// The CLI arguments of one random operation; XML goes to a file under `dir`.
fn random_op(rng: &mut Rng, dir: &Path, tag: &str) -> Vec<String> {
    let name = rng.pick(NAMES).to_string();
    let persistent_name = rng.pick(&NAMES[..4]).to_string();
    let xml_file = |rng: &mut Rng, name: &str| {
        let path = dir.join(format!("{tag}.xml"));
        std::fs::write(&path, network_xml(rng, name)).expect("write xml");
        path.display().to_string()
    };
    let op: Vec<String> = match rng.below(100) {
        0..15 => vec!["net-define".into(), xml_file(rng, &persistent_name)],
        15..25 => vec!["net-create".into(), xml_file(rng, &name)],
        25..45 => vec!["net-start".into(), persistent_name],
        45..62 => vec!["net-destroy".into(), name],
        62..72 => vec!["net-undefine".into(), persistent_name],
        72..80 => {
            let mut op = vec!["net-autostart".into(), persistent_name];
            if rng.chance(40) {
                op.push("--disable".into());
            }
            op
        }
        80..88 => {
            // A few port slots per network, so that creates collide and deletes find
            // something.
            let slot = rng.below(3);
            let uuid = format!("5e1f0000-0000-4000-8000-00000000000{slot}");
            if rng.chance(60) {
                let path = dir.join(format!("{tag}-port.xml"));
                let bandwidth = if rng.chance(50) {
                    "<bandwidth><outbound average='100'/></bandwidth>"
                } else {
                    ""
                };
                let xml = format!(
                    "<networkport><uuid>{uuid}</uuid><owner><name>guest{slot}</name>\
                     <uuid>5e1f0000-0000-4000-8000-0000000000f{slot}</uuid></owner>\
                     <mac address='52:54:00:5e:00:0{slot}'/>{bandwidth}</networkport>"
                );
                std::fs::write(&path, xml).expect("write port xml");
                vec!["net-port-create".into(), name, path.display().to_string()]
            } else {
                vec!["net-port-delete".into(), name, uuid]
            }
        }
        _ => {
            let host = rng.below(3);
            let octet = rng.pick(SUBNETS);
            let add = rng.chance(55);
            let (section, xml) = if rng.chance(60) {
                let xml = if add {
                    format!(
                        "<host ip='10.77.{octet}.{}'><hostname>h{host}</hostname></host>",
                        10 + host
                    )
                } else {
                    format!("<host><hostname>h{host}</hostname></host>")
                };
                ("dns-host", xml)
            } else {
                // A reservation gives a network without <dhcp> a DHCP server (and a lease file).
                let xml = if add {
                    format!(
                        "<host mac='52:54:00:77:00:0{host}' ip='10.77.{octet}.{}'/>",
                        20 + host
                    )
                } else {
                    format!("<host mac='52:54:00:77:00:0{host}'/>")
                };
                ("ip-dhcp-host", xml)
            };
            let command = if add { "add" } else { "delete" };
            let mut op = vec![
                "net-update".into(),
                name,
                command.into(),
                section.into(),
                xml,
            ];
            match rng.below(4) {
                0 => op.push("--live".into()),
                1 => op.push("--config".into()),
                2 => op.extend(["--live".into(), "--config".into()]),
                _ => {}
            }
            op
        }
    };
    op
}

/// A request written straight to the socket and closed at once (sometimes half-sent).
fn raw_request(rng: &mut Rng, socket: &Path) {
    let name = rng.pick(NAMES);
    let (method, path, body) = match rng.below(4) {
        0 => ("POST", format!("/v1/networks/{name}/start"), String::new()),
        1 => ("POST", format!("/v1/networks/{name}/stop"), String::new()),
        2 => ("DELETE", format!("/v1/networks/{name}"), String::new()),
        _ => {
            let xml = network_xml(rng, name);
            let query = if rng.chance(50) {
                "?transient=true"
            } else {
                ""
            };
            (
                "POST",
                format!("/v1/networks{query}"),
                serde_json::json!({ "xml": xml }).to_string(),
            )
        }
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: kvnetd\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    if rng.chance(20) {
        request.truncate(rng.below(request.len()));
    }
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) {
        let _ = stream.write_all(&request);
        if rng.chance(50) {
            std::thread::sleep(Duration::from_micros(rng.below(2000) as u64));
        }
    }
}

/// One client: a seeded sequence of CLI calls, some killed mid-request, and raw requests.
fn client(
    socket: PathBuf,
    dir: PathBuf,
    seed: u64,
    id: usize,
    until: Instant,
    count: Arc<AtomicUsize>,
) -> (usize, usize) {
    let mut rng = Rng(seed ^ (id as u64).wrapping_mul(0x5851_f42d_4c95_7f2d));
    let (mut done, mut succeeded) = (0, 0);
    for n in 0..OPS_PER_CLIENT {
        if Instant::now() >= until {
            break;
        }
        done += 1;
        count.fetch_add(1, Ordering::Relaxed);
        if rng.chance(6) {
            raw_request(&mut rng, &socket);
            continue;
        }
        let args = random_op(&mut rng, &dir, &format!("c{id}-{n}"));
        let mut child = common::kvnet_command(&socket)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kvnet");
        if rng.chance(15) {
            std::thread::sleep(Duration::from_micros(rng.below(8000) as u64));
            let _ = child.kill();
        }
        if child.wait().is_ok_and(|status| status.success()) {
            succeeded += 1;
        }
    }
    (done, succeeded)
}

/// How the daemon is interrupted during a storm.
#[derive(Clone, Copy, Debug)]
enum Interrupt {
    None,
    /// SIGKILL after this many operations.
    Kill(usize),
    /// SIGTERM (graceful stop) after this many operations.
    Term(usize),
}

/// Runs the storm; an interrupted daemon is started again once the clients are done.
/// Returns how many CLI calls succeeded.
fn storm(daemon: &mut Daemon, seed: u64, interrupt: Interrupt) -> usize {
    let started = Instant::now();
    let until = started + STORM;
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let socket = daemon.socket();
            let dir = daemon.dirs.path().to_owned();
            let count = Arc::clone(&count);
            std::thread::spawn(move || client(socket, dir, seed, id, until, count))
        })
        .collect();
    if let Interrupt::Kill(after) | Interrupt::Term(after) = interrupt {
        while count.load(Ordering::Relaxed) < after && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Interrupt::Kill(_) = interrupt {
            daemon.kill9();
        } else {
            daemon.stop();
        }
        eprintln!(
            "storm: daemon {interrupt:?} after {} operations",
            count.load(Ordering::Relaxed)
        );
    }
    let (ops, succeeded) = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    eprintln!(
        "storm: {ops} operations ({succeeded} CLI calls succeeded) in {:?}",
        started.elapsed()
    );
    if !matches!(interrupt, Interrupt::None) {
        daemon.spawn(&DaemonOptions::no_default_network());
    }
    succeeded
}

/// What a quiet system looks like from every side, for comparison and assertions.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// `net-list --all --json`: name -> (active, persistent, autostart, bridge).
    listed: BTreeMap<String, (bool, bool, bool, Option<String>)>,
    /// Bridges in the namespace -> (up, addresses).
    bridges: BTreeMap<String, (bool, Vec<String>)>,
    /// kvnet's table, `None` when absent.
    table: Option<String>,
    /// Addresses with a UDP listener on port 53, as `address%device`.
    dns_listeners: BTreeSet<String>,
    /// Devices with a DHCP (UDP port 67) listener.
    dhcp_listeners: BTreeSet<String>,
    /// Devices with a DHCPv6 (UDP port 547) listener.
    dhcp6_listeners: BTreeSet<String>,
    /// Files in `<state>/networks` -> content (status files) or "" (others).
    state_files: BTreeMap<String, String>,
    /// Files in `<config>/networks` and `autostart/`, symlinks as "-> target".
    config_files: BTreeMap<String, String>,
    /// Taps in the namespace -> (up, the bridge it is plugged into).
    taps: BTreeMap<String, (bool, Option<String>)>,
    /// IFB devices named as kvnet names them -> (whether they carry kvnet's alias,
    /// whether the device whose ingress each shapes, by the ifindex in its name, exists).
    ifbs: BTreeMap<String, (bool, bool)>,
}

fn dir_files(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            files.insert(name, format!("-> {}", target.display()));
        } else if meta.is_file() {
            let content = if name.ends_with(".json") || name.ends_with(".ports") {
                std::fs::read_to_string(&path).unwrap_or_default()
            } else {
                String::new()
            };
            files.insert(name, content);
        }
    }
    files
}

fn snapshot(daemon: &Daemon) -> Snapshot {
    let out = daemon.kvnet(&["net-list", "--all", "--json"]);
    assert!(
        out.status.success(),
        "net-list failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("net-list json");
    let listed = list
        .as_array()
        .expect("array")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name").to_owned(),
                (
                    n["active"].as_bool().expect("active"),
                    n["persistent"].as_bool().expect("persistent"),
                    n["autostart"].as_bool().expect("autostart"),
                    n["bridge"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect();
    let links = daemon.ip_json("link show type bridge");
    let bridges = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_owned();
            let up = common::is_up(l);
            let mut addresses = daemon.addresses(&name);
            addresses.sort();
            Some((name, (up, addresses)))
        })
        .collect();
    let table = daemon.ns.sh("nft list table inet kvnet").ok();
    let dns_listeners = daemon
        .ns
        .sh("ss -Hlnu 'sport = :53'")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':').map(|(addr, _)| addr.to_owned()))
        .collect();
    // `0.0.0.0%kvsa:67`, `[::]%kvsa:547`: bound to the bridge.
    let bound_devices = |port: u16| -> BTreeSet<String> {
        daemon
            .ns
            .sh(&format!("ss -Hlnu 'sport = :{port}'"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| Some(local.split_once('%')?.1.rsplit_once(':')?.0.to_owned()))
            .collect()
    };
    let dhcp_listeners = bound_devices(67);
    let dhcp6_listeners = bound_devices(547);
    let taps = daemon
        .ip_json("-d link show type tun")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| {
            let name = link["ifname"].as_str()?.to_owned();
            let master = link["master"].as_str().map(str::to_owned);
            Some((name, (common::is_up(link), master)))
        })
        .collect();
    let all_links = daemon.ip_json("-d link show");
    let all_links = all_links.as_array().cloned().unwrap_or_default();
    let indexes: BTreeSet<u64> = all_links
        .iter()
        .filter_map(|link| link["ifindex"].as_u64())
        .collect();
    let ifbs = all_links
        .iter()
        .filter(|link| link["linkinfo"]["info_kind"] == "ifb")
        .filter_map(|link| {
            let name = link["ifname"].as_str()?.to_owned();
            let owner = name.strip_prefix("kvifb")?.parse::<u64>().ok()?;
            let marked = link["ifalias"]
                .as_str()
                .is_some_and(|alias| alias.starts_with("kvnet: "));
            Some((name, (marked, indexes.contains(&owner))))
        })
        .collect();
    let networks_dir = daemon.config_dir().join("networks");
    let mut config_files = dir_files(&networks_dir);
    for (name, content) in dir_files(&networks_dir.join("autostart")) {
        config_files.insert(format!("autostart/{name}"), content);
    }
    Snapshot {
        listed,
        bridges,
        table,
        dns_listeners,
        dhcp_listeners,
        dhcp6_listeners,
        state_files: dir_files(&daemon.state_dir().join("networks")),
        config_files,
        taps,
        ifbs,
    }
}

/// Waits until snapshots agree for a second (killed clients' changes finish; one step
/// of a change, a bridge's deletion say, can take a few hundred ms on a loaded machine).
fn quiet(daemon: &Daemon) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = snapshot(daemon);
    let mut unchanged = 0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = snapshot(daemon);
        if now == last {
            unchanged += 1;
            if unchanged == 4 {
                return now;
            }
            continue;
        }
        unchanged = 0;
        assert!(
            Instant::now() < deadline,
            "the system never settled: still changing 30 s after the storm\n{now:#?}\nkvnetd log:\n{}",
            daemon.log()
        );
        last = now;
    }
}

/// The product rule: every side agrees, nothing is orphaned.
fn assert_consistent(daemon: &Daemon, snap: &Snapshot, seed: u64, when: &str) {
    eprintln!(
        "{when}: {} networks, bridges {:?}, DNS on {:?}, DHCP on {:?}, DHCPv6 on {:?}, taps {:?}, ifbs {:?}",
        snap.listed.len(),
        snap.bridges.keys().collect::<Vec<_>>(),
        snap.dns_listeners,
        snap.dhcp_listeners,
        snap.dhcp6_listeners,
        snap.taps,
        snap.ifbs.keys().collect::<Vec<_>>()
    );
    let mut problems = Vec::new();
    let active: BTreeMap<&str, &str> = snap
        .listed
        .iter()
        .filter(|(_, (active, ..))| *active)
        .map(|(name, (.., bridge))| (name.as_str(), bridge.as_deref().unwrap_or("")))
        .collect();
    // Bridges: exactly those of the active networks, up, with their address.
    let expected_bridges: BTreeSet<&str> = active.values().copied().collect();
    let bridges: BTreeSet<&str> = snap.bridges.keys().map(String::as_str).collect();
    if expected_bridges != bridges {
        problems.push(format!(
            "bridges {bridges:?}, active networks' bridges {expected_bridges:?}"
        ));
    }
    // Status files: one per active network, active, naming its bridge and persistence.
    let mut statuses = BTreeSet::new();
    let mut listen = BTreeSet::new();
    let mut listen6 = BTreeSet::new();
    let mut serve_dhcp = BTreeSet::new();
    let mut serve_dhcp6 = BTreeSet::new();
    let mut recorded_taps = BTreeSet::new();
    for (file, content) in &snap.state_files {
        if let Some(name) = file.strip_suffix(".json") {
            statuses.insert(name);
            let status: serde_json::Value = match serde_json::from_str(content) {
                Ok(status) => status,
                Err(e) => {
                    problems.push(format!("status {file} unreadable: {e}"));
                    continue;
                }
            };
            let Some((is_active, persistent, _, bridge)) = snap.listed.get(name) else {
                problems.push(format!("status {file} of an unknown network"));
                continue;
            };
            if !is_active || status["phase"] != "active" {
                problems.push(format!(
                    "status {file} is {} but listed active={is_active}",
                    status["phase"]
                ));
            }
            if status["bridge"].as_str() != bridge.as_deref() {
                problems.push(format!(
                    "status {file} names bridge {} but listed {bridge:?}",
                    status["bridge"]
                ));
            }
            if status["persistent"].as_bool() != Some(*persistent) {
                problems.push(format!(
                    "status {file} persistent={} but listed {persistent}",
                    status["persistent"]
                ));
            }
            let xml = status["xml"].as_str().unwrap_or_default();
            let (ipv4_xml, ipv6_xml) = xml
                .split_once("<ip family='ipv6' address='")
                .unwrap_or((xml, ""));
            if ipv4_xml.contains("<dhcp>") {
                serve_dhcp.insert(status["bridge"].as_str().unwrap_or_default().to_owned());
            }
            if let Some(address) = ipv6_xml.split('\'').next().filter(|a| !a.is_empty()) {
                let bridge = status["bridge"].as_str().unwrap_or_default();
                serve_dhcp6.insert(bridge.to_owned());
                listen6.insert(format!("[{address}]%{bridge}"));
                // And on the bridge's link-local address, as libvirt's dnsmasq does.
                if let Some(link_local) = xml
                    .split("<mac address='")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                    .and_then(common::eui64_link_local)
                {
                    listen6.insert(format!("[{link_local}]%{bridge}"));
                }
                if !snap
                    .bridges
                    .get(bridge)
                    .is_some_and(|(_, addresses)| addresses.contains(&format!("{address}/64")))
                {
                    problems.push(format!("bridge {bridge} of {name} lacks {address}/64"));
                }
            }
            if let Some(rest) = xml.split("<ip address='").nth(1)
                && let Some(address) = rest.split('\'').next()
            {
                let bridge = status["bridge"].as_str().unwrap_or_default();
                // Bound to the bridge: queries from elsewhere are not seen.
                listen.insert(format!("{address}%{bridge}"));
                match snap.bridges.get(bridge) {
                    Some((up, addresses)) => {
                        if !up {
                            problems.push(format!("bridge {bridge} of {name} is down"));
                        }
                        if !addresses.contains(&format!("{address}/24")) {
                            problems.push(format!(
                                "bridge {bridge} of {name} lacks {address}/24: {addresses:?}"
                            ));
                        }
                    }
                    None => problems.push(format!("bridge {bridge} of {name} missing")),
                }
                // Every bridge's name must be in the table's sets (all modes here have rules).
                let quoted = format!("\"{bridge}\"");
                if !snap.table.as_deref().is_some_and(|t| t.contains(&quoted)) {
                    problems.push(format!("no firewall rules for {bridge} of {name}"));
                }
            }
        } else if let Some(name) = file
            .strip_suffix(".leases")
            .or_else(|| file.strip_suffix(".leases6"))
        {
            if !snap.listed.contains_key(name) {
                problems.push(format!("lease file {file} of an unknown network"));
            }
        } else if let Some(name) = file.strip_suffix(".ports") {
            check_ports(snap, name, content, &mut recorded_taps, &mut problems);
        } else {
            problems.push(format!("stray file {file} in the state dir"));
        }
    }
    // Every tap is a recorded port's: none outlives its port or network.
    for tap in snap.taps.keys() {
        if !recorded_taps.contains(tap) {
            problems.push(format!("tap {tap} is no port's"));
        }
    }
    if expected_bridges.len() != active.len() {
        problems.push(format!("active networks share a bridge: {active:?}"));
    }
    let addresses = snap
        .state_files
        .iter()
        .filter(|(file, _)| file.ends_with(".json"))
        .filter_map(|(_, content)| content.split("<ip address='").nth(1)?.split('\'').next())
        .count();
    if addresses != listen.len() {
        problems.push(format!("active networks share a subnet: {listen:?}"));
    }
    let active_names: BTreeSet<&str> = active.keys().copied().collect();
    if statuses != active_names {
        problems.push(format!(
            "status files {statuses:?}, active networks {active_names:?}"
        ));
    }
    let all_addresses: BTreeSet<String> = listen.union(&listen6).cloned().collect();
    if snap.dns_listeners != all_addresses {
        problems.push(format!(
            "DNS listens on {:?}, active networks' addresses {all_addresses:?}",
            snap.dns_listeners
        ));
    }
    if snap.dhcp6_listeners != serve_dhcp6 {
        problems.push(format!(
            "DHCPv6 listens on {:?}, active networks with IPv6 <dhcp> are on {serve_dhcp6:?}",
            snap.dhcp6_listeners
        ));
    }
    if snap.dhcp_listeners != serve_dhcp {
        problems.push(format!(
            "DHCP listens on {:?}, active networks with <dhcp> are on {serve_dhcp:?}",
            snap.dhcp_listeners
        ));
    }
    // The firewall names no bridge of an inactive network; no table without networks.
    if let Some(table) = &snap.table {
        if active.is_empty() {
            problems.push("kvnet's table is left without active networks".into());
        }
        for candidate in table.split('"').skip(1).step_by(2) {
            if !expected_bridges.contains(candidate) {
                problems.push(format!("firewall rules left for {candidate}"));
            }
        }
    }
    // Config: one definition per persistent network, one link per autostart one.
    let persistent: BTreeSet<&str> = snap
        .listed
        .iter()
        .filter(|(_, (_, persistent, ..))| *persistent)
        .map(|(name, _)| name.as_str())
        .collect();
    let autostart: BTreeSet<&str> = snap
        .listed
        .iter()
        .filter(|(_, (_, _, autostart, _))| *autostart)
        .map(|(name, _)| name.as_str())
        .collect();
    let mut defined = BTreeSet::new();
    let mut links = BTreeSet::new();
    for (file, content) in &snap.config_files {
        if let Some(link) = file.strip_prefix("autostart/") {
            match link.strip_suffix(".xml") {
                Some(name) if *content == format!("-> ../{link}") => {
                    links.insert(name);
                }
                _ => problems.push(format!("stray autostart entry {file} {content}")),
            }
        } else if let Some(name) = file.strip_suffix(".xml")
            && !name.starts_with('.')
        {
            defined.insert(name);
        } else {
            problems.push(format!("stray file {file} in the config dir"));
        }
    }
    if defined != persistent {
        problems.push(format!(
            "definitions {defined:?}, persistent networks {persistent:?}"
        ));
    }
    if links != autostart {
        problems.push(format!(
            "autostart links {links:?}, autostart networks {autostart:?}"
        ));
    }
    // A shaped bridge's or tap's IFB goes with it.
    for (ifb, (marked, owner_exists)) in &snap.ifbs {
        if !owner_exists {
            problems.push(format!("ifb device {ifb} outlived the device it shaped"));
        }
        if !marked {
            problems.push(format!("ifb device {ifb} lacks kvnet's alias"));
        }
    }
    for name in snap.listed.keys() {
        if !active_names.contains(name.as_str()) && !persistent.contains(name.as_str()) {
            problems.push(format!(
                "{name} is listed but neither active nor persistent"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "inconsistent {when} (KVNET_STRESS_SEED={seed}):\n  {}\n{snap:#?}\ndaemon log:\n{}",
        problems.join("\n  "),
        daemon.log()
    );
}

/// The ports file of network `name`: a known network's, each port's tap there, up on the
/// network's bridge while it runs, down and on no bridge while it does not.
fn check_ports(
    snap: &Snapshot,
    name: &str,
    content: &str,
    recorded_taps: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let Some((active, _, _, bridge)) = snap.listed.get(name) else {
        problems.push(format!("ports of an unknown network {name}"));
        return;
    };
    let ports: Vec<serde_json::Value> = match serde_json::from_str(content) {
        Ok(ports) => ports,
        Err(e) => {
            problems.push(format!("ports of {name} unreadable: {e}"));
            return;
        }
    };
    for port in &ports {
        let tap = port["tap"].as_str().unwrap_or_default();
        if !recorded_taps.insert(tap.to_owned()) {
            problems.push(format!("tap {tap} is recorded twice"));
        }
        match snap.taps.get(tap) {
            None => problems.push(format!("port of {name} on tap {tap}, which is gone")),
            Some((up, master)) => {
                let expected = if *active { bridge.as_ref() } else { None };
                if master.as_ref() != expected || up != active {
                    problems.push(format!(
                        "tap {tap} of {name} (active={active}) is on {master:?} (up={up}), not {expected:?}"
                    ));
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("KVNET_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[test]
fn a_storm_of_interrupted_changes_leaves_every_side_in_agreement() {
    if !require(&common::port_needs()) {
        return;
    }
    let seed = seed();
    eprintln!("KVNET_STRESS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());

    // Most random operations fail by design (a start of a network another client
    // undefined, say); but a storm whose calls all failed would test nothing.
    let succeeded = storm(&mut daemon, rng.next(), Interrupt::None);
    assert!(
        succeeded >= 10,
        "only {succeeded} CLI calls succeeded (KVNET_STRESS_SEED={seed})\n{}",
        daemon.log()
    );
    let before = quiet(&daemon);
    assert_consistent(&daemon, &before, seed, "after the storm");
    daemon.stop();
    daemon.spawn(&DaemonOptions::no_default_network());
    let after = quiet(&daemon);
    assert_consistent(&daemon, &after, seed, "after a restart");
    assert_eq!(
        before.listed, after.listed,
        "a restart changed net-list (KVNET_STRESS_SEED={seed})"
    );

    let mut snap = after;
    for round in 0..4 {
        let after = 10 + rng.below(CLIENTS * OPS_PER_CLIENT - 20);
        let interrupt = if round == 3 {
            Interrupt::Term(after)
        } else {
            Interrupt::Kill(after)
        };
        storm(&mut daemon, rng.next(), interrupt);
        snap = quiet(&daemon);
        assert_consistent(
            &daemon,
            &snap,
            seed,
            &format!("after {interrupt:?} mid-storm"),
        );
    }
    daemon.stop();
    daemon.spawn(&DaemonOptions::no_default_network());
    let after = quiet(&daemon);
    assert_consistent(&daemon, &after, seed, "after a last restart");
    assert_eq!(
        snap.listed, after.listed,
        "a restart changed net-list (KVNET_STRESS_SEED={seed})"
    );
    let snap = after;

    // Everything can still be taken down to nothing.
    for (name, (active, persistent, ..)) in &snap.listed {
        if *active {
            daemon.ok(&["net-destroy", name]);
        }
        if *persistent {
            daemon.ok(&["net-undefine", name]);
        }
    }
    let empty = snapshot(&daemon);
    assert_consistent(&daemon, &empty, seed, "after taking everything down");
    assert!(
        empty.listed.is_empty() && empty.bridges.is_empty(),
        "{empty:#?}"
    );
    assert_eq!(
        empty.state_files,
        BTreeMap::new(),
        "files left in the state dir"
    );
}
