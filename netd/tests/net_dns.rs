//! netns tier: the DNS server against real clients (`dig` from dnsutils) and a real
//! upstream server (`dnsmasq`).
//!
//! Three namespaces: "server" holds bridge `br0` (192.168.88.1/24, fd88::1/64) and runs
//! [`DnsServer`] on a tokio runtime whose threads live there; "client" is a guest on
//! the bridge (eth0, 192.168.88.10) where `dig` runs; "upstream" runs dnsmasq on
//! 10.99.0.2, reached from the server namespace over a veth (10.99.0.1). Every client
//! run is bounded by `timeout`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use netd::dns::{DnsConfig, DnsServer, LeaseSource};
use netd::xml::{DnsForwarder, DnsHost, DnsSrv, DnsTxt};
use testkit::{Dnsmasq, Need, Netns};

const SERVER_IP: &str = "192.168.88.1";
const SERVER_IP6: &str = "fd88::1";
const UPSTREAM_IP: &str = "10.99.0.2";
/// An address in the upstream namespace where nothing listens: its host answers with
/// an ICMP port unreachable, or refuses the TCP connection.
const CLOSED_UPSTREAM_IP: &str = "10.99.0.3";
/// An upstream that answers REFUSED to everything (dnsmasq without servers).
const REFUSING_UPSTREAM_IP: &str = "10.99.0.4";

fn needs() -> bool {
    testkit::require(&[
        Need::Root,
        Need::Netns,
        Need::Program("dig"),
        Need::Program("dnsmasq"),
        Need::Program("timeout"),
    ])
}

/// The three namespaces, with dnsmasq answering `*.up.test` in "upstream".
struct Lab {
    server: Netns,
    client: Netns,
    upstream: Netns,
    _dnsmasq: Dnsmasq,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let server = Netns::new(&format!("{tag}s")).expect("server netns");
        let client = Netns::new(&format!("{tag}c")).expect("client netns");
        let upstream = Netns::new(&format!("{tag}u")).expect("upstream netns");
        server
            .sh(&format!(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip addr add {SERVER_IP}/24 dev br0 && ip addr add {SERVER_IP6}/64 dev br0 nodad && \
                 ip link set br0 up && \
                 ip link add veth-s type veth peer name eth0 netns {client} && \
                 ip link set veth-s master br0 && ip link set veth-s up && \
                 ip link add veth-u type veth peer name eth0 netns {upstream} && \
                 ip addr add 10.99.0.1/24 dev veth-u && ip link set veth-u up",
                client = client.name(),
                upstream = upstream.name(),
            ))
            .expect("bridge and veths");
        client
            .sh("ip addr add 192.168.88.10/24 dev eth0 && ip addr add fd88::10/64 dev eth0 nodad && ip link set eth0 up")
            .expect("client eth0");
        upstream
            .sh(&format!(
                "ip addr add {UPSTREAM_IP}/24 dev eth0 && ip link set eth0 up"
            ))
            .expect("upstream eth0");
        let dnsmasq = Dnsmasq::start(
            &upstream,
            UPSTREAM_IP,
            &[
                "--address=/up.test/10.77.7.7",
                "--txt-record=big.up.test,upstream says hello",
            ],
        )
        .expect("start dnsmasq");
        Lab {
            server,
            client,
            upstream,
            _dnsmasq: dnsmasq,
        }
    }

    /// `dig +short` from the client; one line per answer.
    fn dig_short(&self, args: &str) -> Vec<String> {
        let out = self
            .client
            .sh(&format!("timeout 10 dig +time=2 +tries=2 +short {args}"))
            .unwrap_or_else(|e| panic!("dig {args}: {e}"));
        out.lines().map(str::to_owned).collect()
    }

    /// The `status:` of a full `dig` answer from the client.
    fn dig_status(&self, args: &str) -> String {
        let out = self
            .client
            .sh(&format!("timeout 10 dig +time=2 +tries=2 {args}"))
            .unwrap_or_else(|e| panic!("dig {args}: {e}"));
        field(&out, "status: ", ',')
    }

    /// One try of `dig` from the client: the answers, one per line, and the query
    /// time dig measured, in milliseconds.
    fn dig_timed(&self, args: &str) -> (Vec<String>, u64) {
        let out = self
            .client
            .sh(&format!("timeout 10 dig +time=4 +tries=1 {args}"))
            .unwrap_or_else(|e| panic!("dig {args}: {e}"));
        let answers = out
            .split(";; ANSWER SECTION:\n")
            .nth(1)
            .map(|section| {
                section
                    .lines()
                    .take_while(|line| !line.is_empty())
                    .filter_map(|line| line.split_whitespace().last())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let time = field(&out, ";; Query time: ", ' ')
            .parse()
            .unwrap_or_else(|e| panic!("query time in {out}: {e}"));
        (answers, time)
    }

    /// A UDP socket on port 53 of another address `ip` of the upstream namespace, for a
    /// test's own upstream that misbehaves.
    fn upstream_socket(&self, ip: &str) -> UdpSocket {
        self.upstream
            .sh(&format!("ip addr add {ip}/24 dev eth0"))
            .expect("upstream address");
        self.upstream
            .run(|| UdpSocket::bind((ip, 53)))
            .expect("enter upstream")
            .expect("bind the upstream socket")
    }

    /// Waits until dnsmasq answers from the server namespace.
    fn wait_for_upstream(&self) {
        for _ in 0..50 {
            let ready = self
                .server
                .sh(&format!(
                    "timeout 2 dig +time=1 +tries=1 +short @{UPSTREAM_IP} x.up.test"
                ))
                .is_ok_and(|out| out.trim() == "10.77.7.7");
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq in the upstream namespace never answered");
    }
}

/// The text of `output` between `label` and the next `end`.
fn field(output: &str, label: &str, end: char) -> String {
    output
        .split(label)
        .nth(1)
        .and_then(|rest| rest.split(end).next())
        .unwrap_or_else(|| panic!("no {label:?} in {output}"))
        .to_owned()
}

fn config() -> DnsConfig {
    DnsConfig {
        network: "dnstest".into(),
        listen: vec![
            SERVER_IP.parse().expect("ip"),
            SERVER_IP6.parse().expect("ip6"),
        ],
        interface: Some("br0".into()),
        clients: ["192.168.88.0/24", "fd88::/64", "fe80::/10"]
            .map(|net| net.parse().expect("subnet"))
            .to_vec(),
        domain: Some("example.test".into()),
        local_only: true,
        forward_plain_names: true,
        local_ptr_domains: Vec::new(),
        hosts: vec![DnsHost {
            ip: "192.168.88.50".parse().expect("ip"),
            hostnames: vec!["static1".into()],
        }],
        host_file: Arc::default(),
        srvs: vec![DnsSrv {
            service: "http".into(),
            protocol: "tcp".into(),
            domain: Some("example.test".into()),
            target: Some("web1.example.test".into()),
            port: Some(8080),
            priority: Some(1),
            weight: Some(2),
        }],
        txts: vec![DnsTxt {
            name: "about.example.test".into(),
            value: "kvnet".into(),
        }],
        forwarders: vec![DnsForwarder {
            addr: Some(UPSTREAM_IP.parse().expect("ip")),
            domain: None,
        }],
        // Never used: the forwarder above replaces the host's resolvers.
        default_upstreams: vec!["127.0.0.1:53".parse().expect("address")],
        addresses: Vec::new(),
        cache_size: None,
        log_queries: None,
    }
}

fn leases() -> LeaseSource {
    LeaseSource::new(Arc::new(|| {
        vec![(Ipv4Addr::new(192, 168, 88, 77).into(), "web1".to_owned())]
    }))
}

/// Runs `scenario` while a DNS server for `config` runs in the server namespace.
fn with_server<T: Send>(lab: &Lab, config: DnsConfig, scenario: impl FnOnce() -> T + Send) -> T {
    lab.server
        .run(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let server = {
                let _enter = runtime.enter();
                DnsServer::start(config, Some(leases())).expect("start the DNS server")
            };
            let result = scenario();
            runtime.block_on(server.stop());
            result
        })
        .expect("scenario in the server namespace")
}

#[test]
fn dig_resolves_guest_names_reverse_srv_txt_over_udp_tcp_and_ipv6() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsl");
    with_server(&lab, config(), || {
        let at = format!("@{SERVER_IP}");
        let at6 = format!("@{SERVER_IP6}");
        let cases = [
            (format!("{at} web1.example.test"), "192.168.88.77"),
            (format!("{at} WEB1"), "192.168.88.77"),
            (format!("{at} static1.example.test"), "192.168.88.50"),
            (format!("{at} -x 192.168.88.77"), "web1.example.test."),
            (format!("{at} -x 192.168.88.50"), "static1.example.test."),
            (
                format!("{at} _http._tcp.example.test SRV"),
                "1 2 8080 web1.example.test.",
            ),
            (format!("{at} about.example.test TXT"), "\"kvnet\""),
            (format!("+tcp {at} static1.example.test"), "192.168.88.50"),
            (format!("{at6} web1.example.test"), "192.168.88.77"),
            (format!("+tcp {at6} -x 192.168.88.77"), "web1.example.test."),
        ];
        for (query, answer) in &cases {
            assert_eq!(lab.dig_short(query), [*answer], "dig {query}");
        }
        assert_eq!(
            lab.dig_status(&format!("{at} web1.example.test AAAA")),
            "NOERROR"
        );
    });
}

/// Like libvirt's dnsmasq (`interface=` the bridge), the server answers only what
/// arrives on the bridge: a host that routes to the bridge's address from elsewhere
/// (here the upstream side) gets neither local names nor recursion, over UDP or TCP.
#[test]
fn queries_from_outside_the_bridge_are_not_answered() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnso");
    lab.wait_for_upstream();
    lab.upstream
        .sh("ip route add 192.168.88.0/24 via 10.99.0.1")
        .expect("route to the bridge's subnet");
    with_server(&lab, config(), || {
        // From the guest on the bridge, it answers.
        assert_eq!(
            lab.dig_short(&format!("@{SERVER_IP} static1.example.test")),
            ["192.168.88.50"]
        );
        for transport in ["+notcp", "+tcp"] {
            for name in ["static1.example.test", "www.up.test"] {
                let out = lab
                    .upstream
                    .sh(&format!(
                        "timeout 10 dig {transport} +tries=1 +time=2 @{SERVER_IP} {name} || true"
                    ))
                    .unwrap_or_default();
                assert!(
                    !out.contains("status: NOERROR"),
                    "{name} answered {transport} from outside the bridge:\n{out}"
                );
            }
        }
    });
}

/// A guest on the bridge that spoofs an address outside the network gets no answer:
/// the answer would go out on the bridge as if the address were there, each one taking a
/// slot of the host's neighbour table (1,024 by default, for the whole host).
#[test]
fn queries_from_addresses_outside_the_network_are_not_answered() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsp");
    lab.client
        .sh("ip addr add 203.0.113.9/32 dev eth0")
        .expect("an outside address");
    with_server(&lab, config(), || {
        assert_eq!(
            lab.dig_short(&format!("@{SERVER_IP} static1.example.test")),
            ["192.168.88.50"]
        );
        let out = lab
            .client
            .sh(&format!(
                "timeout 10 dig +notcp +tries=1 +time=2 -b 203.0.113.9 @{SERVER_IP} \
                 static1.example.test || true"
            ))
            .unwrap_or_default();
        assert!(
            !out.contains("status: NOERROR"),
            "answered a spoofed source:\n{out}"
        );
        let neighbours = lab.server.sh("ip neigh show dev br0").unwrap_or_default();
        assert!(!neighbours.contains("203.0.113.9"), "{neighbours}");
    });
}

#[test]
fn other_names_are_forwarded_upstream_and_local_only_names_are_not() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsf");
    lab.wait_for_upstream();
    with_server(&lab, config(), || {
        let at = format!("@{SERVER_IP}");
        assert_eq!(lab.dig_short(&format!("{at} www.up.test")), ["10.77.7.7"]);
        assert_eq!(
            lab.dig_short(&format!("+tcp {at} tcp.up.test")),
            ["10.77.7.7"]
        );
        assert_eq!(
            lab.dig_short(&format!("{at} big.up.test TXT")),
            ["\"upstream says hello\""]
        );
        // localOnly: a missing name of the domain is not asked upstream.
        assert_eq!(
            lab.dig_status(&format!("{at} nobody.example.test")),
            "NXDOMAIN"
        );
    });

    // Without localOnly the domain's unknown names go upstream too (dnsmasq knows none
    // of them), and a domain forwarder routes its domain only.
    with_server(&lab, routed_only("up.test"), || {
        let at = format!("@{SERVER_IP}");
        assert_eq!(
            lab.dig_short(&format!("{at} routed.up.test")),
            ["10.77.7.7"]
        );
        assert_eq!(lab.dig_status(&format!("{at} www.example.org")), "REFUSED");
    });

    // dnsmasq's `*.` form: the names under the domain, not the domain itself.
    with_server(&lab, routed_only("*.up.test"), || {
        let at = format!("@{SERVER_IP}");
        assert_eq!(lab.dig_short(&format!("{at} a.b.up.test")), ["10.77.7.7"]);
        assert_eq!(lab.dig_status(&format!("{at} up.test")), "REFUSED");
    });
}

/// [`config`] without localOnly, forwarding only names `domain` covers, to the upstream.
fn routed_only(domain: &str) -> DnsConfig {
    let mut routed = config();
    routed.local_only = false;
    routed.forwarders = vec![DnsForwarder {
        addr: Some(UPSTREAM_IP.parse().expect("ip")),
        domain: Some(domain.into()),
    }];
    routed.default_upstreams = Vec::new();
    routed
}

#[test]
fn silent_closed_and_refusing_upstreams_are_passed_over_for_the_next() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsr");
    /// Takes queries and never answers.
    const SILENT_UPSTREAM_IP: &str = "10.99.0.6";
    lab.upstream
        .sh(&format!(
            "ip addr add {CLOSED_UPSTREAM_IP}/24 dev eth0 && ip addr add {REFUSING_UPSTREAM_IP}/24 dev eth0 \
             && ip addr add {SILENT_UPSTREAM_IP}/24 dev eth0"
        ))
        .expect("upstream addresses");
    let _silent = lab
        .upstream
        .run(|| UdpSocket::bind((SILENT_UPSTREAM_IP, 53)))
        .expect("enter upstream")
        .expect("bind the silent upstream");
    let refusing = Dnsmasq::start(&lab.upstream, REFUSING_UPSTREAM_IP, &[])
        .expect("start the refusing dnsmasq");
    lab.wait_for_upstream();
    let refused = lab
        .server
        .sh(&format!(
            "timeout 5 dig +time=1 +tries=3 @{REFUSING_UPSTREAM_IP} x.up.test"
        ))
        .expect("dig the refusing dnsmasq");
    assert!(refused.contains("status: REFUSED"), "{refused}");

    let mut config = config();
    config.forwarders = [
        SILENT_UPSTREAM_IP,
        CLOSED_UPSTREAM_IP,
        REFUSING_UPSTREAM_IP,
        UPSTREAM_IP,
    ]
    .iter()
    .map(|addr| DnsForwarder {
        addr: Some(addr.parse().expect("ip")),
        domain: None,
    })
    .collect();
    with_server(&lab, config.clone(), || {
        let at = format!("@{SERVER_IP}");
        // The silent server costs one attempt timeout, the closed and the refusing
        // ones nothing. One timeout does not demote a server (strict order, as
        // libvirt's dnsmasq keeps it): the silent one is asked first three times.
        let mut first = u64::MAX;
        for n in 0..3 {
            let (answers, took) = lab.dig_timed(&format!("{at} first{n}.up.test"));
            assert_eq!(answers, ["10.77.7.7"]);
            assert!(
                took >= 900,
                "query {n} answered in {took} ms without waiting for the silent server"
            );
            // A second attempt timeout would be the closed server's.
            assert!(
                took < 1800,
                "query {n} took {took} ms: the closed server was waited for"
            );
            first = first.min(took);
        }
        // Then it is asked last: the next query goes straight to the good one.
        let (answers, second) = lab.dig_timed(&format!("{at} second.up.test"));
        assert_eq!(answers, ["10.77.7.7"]);
        assert!(second < first, "{second} ms, first {first} ms");
        // TCP: the silent and closed addresses refuse the connection, dnsmasq refuses
        // the query.
        assert_eq!(
            lab.dig_short(&format!("+tcp {at} tcp.up.test")),
            ["10.77.7.7"]
        );
    });
    // A fresh server (nothing known about the upstreams) over TCP first.
    with_server(&lab, config, || {
        assert_eq!(
            lab.dig_short(&format!("+tcp @{SERVER_IP} fresh.up.test")),
            ["10.77.7.7"]
        );
    });
    drop(refusing);
}

/// A query that can reach no upstream is refused at once, as dnsmasq does, rather
/// than left to the client's timeouts; over TCP, a forward that failed gets SERVFAIL
/// and the connection goes on serving.
#[test]
fn unreachable_upstreams_get_a_prompt_refusal_and_tcp_a_servfail() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsf");
    let mut config = config();
    // No route to it from the server's namespace: every send fails at once.
    config.forwarders = vec![DnsForwarder {
        addr: Some("10.123.0.1".parse().expect("ip")),
        domain: None,
    }];
    with_server(&lab, config, || {
        // One try, timed by dig itself (not the processes' start): a refusal that waited
        // for an upstream's second of silence would take a second.
        let out = lab
            .client
            .sh(&format!(
                "timeout 10 dig +time=4 +tries=1 @{SERVER_IP} www.up.test"
            ))
            .expect("dig");
        assert_eq!(field(&out, "status: ", ','), "REFUSED", "{out}");
        let time: u64 = field(&out, ";; Query time: ", ' ')
            .parse()
            .unwrap_or_else(|e| panic!("query time in {out}: {e}"));
        assert!(time < 900, "refused only after {time} ms");
    });
    let mut config = self::config();
    // Reachable, but nothing listens: the TCP connection is refused.
    lab.upstream
        .sh(&format!("ip addr add {CLOSED_UPSTREAM_IP}/24 dev eth0"))
        .expect("upstream address");
    config.forwarders = vec![DnsForwarder {
        addr: Some(CLOSED_UPSTREAM_IP.parse().expect("ip")),
        domain: None,
    }];
    with_server(&lab, config, || {
        let out = lab
            .client
            .sh(&format!(
                "timeout 20 dig +tcp +keepopen +time=8 +tries=1 @{SERVER_IP} www.up.test static1.example.test"
            ))
            .expect("dig");
        assert!(out.contains("status: SERVFAIL"), "{out}");
        // The same connection then answers a local name.
        assert!(out.contains("192.168.88.50"), "{out}");
    });
}

/// A first upstream that answers after its attempt time is still heard when the next
/// one cannot be sent to: the forward waits for it until the deadline, as it would for
/// the last one asked.
#[test]
fn a_slow_upstream_is_heard_when_the_next_cannot_be_reached() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsw");
    const SLOW_UPSTREAM_IP: &str = "10.99.0.5";
    let socket = lab.upstream_socket(SLOW_UPSTREAM_IP);
    // Answers each query 1.5 s late: NOERROR, no records.
    let slow = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            std::thread::sleep(Duration::from_millis(1500));
            let mut reply = buf[..len].to_vec();
            reply[2] |= 0x80;
            reply[3] = 0x80;
            let _ = socket.send_to(&reply, from);
        }
    });
    let mut config = config();
    config.forwarders = [SLOW_UPSTREAM_IP, "10.123.0.1"]
        .iter()
        .map(|addr| DnsForwarder {
            addr: Some(addr.parse().expect("ip")),
            domain: None,
        })
        .collect();
    with_server(&lab, config, || {
        let out = lab
            .client
            .sh(&format!(
                "timeout 10 dig +time=4 +tries=1 @{SERVER_IP} www.up.test"
            ))
            .unwrap_or_else(|e| e.to_string());
        assert!(out.contains("status: NOERROR"), "{out}");
    });
    drop(slow);
}

/// The only upstream loses the first query: it is asked again after a second, not left
/// silent for the forward's whole wait. One slower than glibc's 5 s first wait still
/// answers the client's retry (which joins the forward), as dnsmasq's does.
#[test]
fn a_lost_query_is_sent_again_and_a_slow_answer_reaches_the_retry() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsr");
    const FLAKY_UPSTREAM_IP: &str = "10.99.0.6";
    let socket = lab.upstream_socket(FLAKY_UPSTREAM_IP);
    // Ignores the first copy of each question; answers `slow.` questions 6 s late.
    let flaky = std::thread::spawn(move || {
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let question = buf[12..len].to_vec();
            let slow = question.windows(4).any(|w| w == b"slow");
            if !slow && seen.insert(question) {
                continue;
            }
            let mut reply = buf[..len].to_vec();
            reply[2] |= 0x80;
            reply[3] = 0x80;
            let socket = socket.try_clone().expect("clone");
            std::thread::spawn(move || {
                if slow {
                    std::thread::sleep(Duration::from_secs(6));
                }
                let _ = socket.send_to(&reply, from);
            });
        }
    });
    let mut config = config();
    config.forwarders = vec![DnsForwarder {
        addr: Some(FLAKY_UPSTREAM_IP.parse().expect("ip")),
        domain: None,
    }];
    with_server(&lab, config, || {
        let started = std::time::Instant::now();
        let out = lab
            .client
            .sh(&format!(
                "timeout 10 dig +time=4 +tries=1 @{SERVER_IP} lost.up.test"
            ))
            .unwrap_or_else(|e| e.to_string());
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // glibc's way: 5 s, then the same question again.
        let out = lab
            .client
            .sh(&format!(
                "timeout 15 dig +time=5 +tries=2 @{SERVER_IP} slow.up.test"
            ))
            .unwrap_or_else(|e| e.to_string());
        assert!(out.contains("status: NOERROR"), "{out}");
        // Over TCP, forwards waiting on an upstream that never answers (its connections
        // wait in the backlog) take every turn the guest has, and its local names are
        // still answered at once.
        let _silent_tcp = lab
            .upstream
            .run(|| std::net::TcpListener::bind((FLAKY_UPSTREAM_IP, 53)))
            .expect("enter upstream")
            .expect("listen");
        let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
        let connect = || {
            lab.client
                .run(|| TcpStream::connect(server).expect("tcp connect"))
                .expect("connect from the client namespace")
        };
        let _hanging: Vec<TcpStream> = (0..netd::dns::server::MAX_TCP_SERVED_PER_CLIENT)
            .map(|n| {
                let mut stream = connect();
                let label = format!("slow{n}");
                let message = a_query(n as u16, &[&label, "up", "test"]);
                let mut framed = (message.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&message);
                stream.write_all(&framed).expect("send");
                stream
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut local = connect();
        local
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        assert!(
            tcp_query(&mut local, 77).is_ok(),
            "a local name waited for the forwards"
        );
    });
    drop(flaky);
}

/// Asks `static1.example.test` over `stream` (a length-prefixed query, RFC 1035 4.2.2)
/// and reads the answer.
fn tcp_query(stream: &mut TcpStream, id: u16) -> std::io::Result<Vec<u8>> {
    let message = a_query(id, &["static1", "example", "test"]);
    let mut query = (message.len() as u16).to_be_bytes().to_vec();
    query.extend_from_slice(&message);
    stream.write_all(&query)?;
    let mut reply_len = [0u8; 2];
    stream.read_exact(&mut reply_len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(reply_len))];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}

/// A query for `labels` of type A with ID `id`, RD set.
fn a_query(id: u16, labels: &[&str]) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

#[test]
fn a_burst_of_queries_from_one_socket_gets_every_answer() {
    if !needs() {
        return;
    }
    // Many queries in flight from one socket are read and answered in batches, equal
    // replies to one client in one segmented (GSO) send: each must still arrive whole,
    // with its own ID.
    let lab = Lab::new("dnsb");
    with_server(&lab, config(), || {
        lab.client
            .run(|| {
                let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
                let socket = UdpSocket::bind("0.0.0.0:0").expect("udp");
                socket
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let names: [&[&str]; 2] = [&["web1", "example", "test"], &["static1"]];
                for round in 0..20u16 {
                    let mut expected = std::collections::BTreeMap::new();
                    for i in 0..48u16 {
                        let id = round * 100 + i;
                        let name = names[usize::from(i % 2)];
                        socket.send_to(&a_query(id, name), server).expect("send");
                        let address = if i % 2 == 0 {
                            [192, 168, 88, 77]
                        } else {
                            [192, 168, 88, 50]
                        };
                        expected.insert(id, (name, address));
                    }
                    let mut buf = [0u8; 1500];
                    while !expected.is_empty() {
                        let (len, from) =
                            socket.recv_from(&mut buf).expect("a reply for every query");
                        assert_eq!(from, server);
                        let reply = &buf[..len];
                        let id = u16::from_be_bytes([reply[0], reply[1]]);
                        let (name, address) = expected
                            .remove(&id)
                            .unwrap_or_else(|| panic!("reply {id} unexpected or twice"));
                        let question = a_query(id, name);
                        assert_eq!(
                            reply[12..question.len()],
                            question[12..],
                            "question of {id}"
                        );
                        assert_eq!(reply[6..8], [0, 1], "one answer for {id}");
                        assert_eq!(reply[len - 4..], address, "address for {id}");
                    }
                }
            })
            .expect("burst from the client namespace");
    });
}

#[test]
fn garbage_packets_leave_the_server_serving() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsg");
    with_server(&lab, config(), || {
        lab.client
            .run(|| {
                let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
                let socket = UdpSocket::bind("0.0.0.0:0").expect("udp");
                let mut state = 0x9e37_79b9_7f4a_7c15u64;
                let mut next = || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for i in 0..2000 {
                    let len = (next() % 600) as usize;
                    let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if i % 3 == 0 && packet.len() > 12 {
                        // Plausible headers: one question, QR clear.
                        packet[2] &= 0x7f;
                        packet[4..6].copy_from_slice(&[0, 1]);
                    }
                    socket.send_to(&packet, server).expect("send garbage");
                }
                socket.send_to(&[], server).expect("send empty");
                // TCP: a short frame, a frame longer than what follows, and junk.
                for junk in [&[0u8, 3, 1, 2, 3][..], &[0x40, 0, 1, 2], &[0xff; 64]] {
                    let mut stream = TcpStream::connect(server).expect("tcp connect");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(3)))
                        .expect("timeout");
                    stream.write_all(junk).expect("write junk");
                    stream
                        .shutdown(std::net::Shutdown::Write)
                        .expect("shutdown");
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                }
            })
            .expect("garbage from the client namespace");
        let at = format!("@{SERVER_IP}");
        assert_eq!(
            lab.dig_short(&format!("{at} web1.example.test")),
            ["192.168.88.77"]
        );
        assert_eq!(
            lab.dig_short(&format!("+tcp {at} web1.example.test")),
            ["192.168.88.77"]
        );
    });
}

#[test]
fn update_swaps_records_while_serving() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnsu");
    lab.server
        .run(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let dns = {
                let _enter = runtime.enter();
                DnsServer::start(config(), Some(leases())).expect("start the DNS server")
            };
            let at = format!("@{SERVER_IP}");
            assert_eq!(
                lab.dig_short(&format!("{at} static1.example.test")),
                ["192.168.88.50"]
            );
            let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
            let mut open = lab
                .client
                .run(|| TcpStream::connect(server).expect("tcp connect"))
                .expect("connect from the client namespace");
            let reply = tcp_query(&mut open, 1).expect("reply");
            assert_eq!(reply[reply.len() - 4..], [192, 168, 88, 50]);
            let mut updated = config();
            updated.hosts = vec![DnsHost {
                ip: "192.168.88.60".parse().expect("ip"),
                hostnames: vec!["added".into()],
            }];
            updated.txts[0].value = "changed".into();
            dns.update(&updated, Some(leases())).expect("update");
            // The watch is read by the serving task: poll until it took the update.
            let mut answer = Vec::new();
            for _ in 0..50 {
                answer = lab.dig_short(&format!("{at} added.example.test"));
                if answer == ["192.168.88.60"] {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(answer, ["192.168.88.60"]);
            assert_eq!(
                lab.dig_status(&format!("{at} static1.example.test")),
                "NXDOMAIN"
            );
            // A connection open since before the update answers with its records too.
            let reply = tcp_query(&mut open, 2).expect("reply");
            assert_eq!(reply[3] & 0x0f, 3, "static1 outlived the update: {reply:?}");
            assert_eq!(
                lab.dig_short(&format!("{at} about.example.test TXT")),
                ["\"changed\""]
            );
            // Leases come from the given source, over TCP too.
            assert_eq!(
                lab.dig_short(&format!("+tcp {at} web1.example.test")),
                ["192.168.88.77"]
            );
            // An invalid update is refused and changes nothing.
            let mut invalid = updated.clone();
            invalid.hosts[0].hostnames = vec!["bad..name".into()];
            assert!(dns.update(&invalid, Some(leases())).is_err());
            assert_eq!(
                lab.dig_short(&format!("{at} added.example.test")),
                ["192.168.88.60"]
            );
            runtime.block_on(dns.stop());
        })
        .expect("scenario in the server namespace");
}

#[test]
fn stopping_closes_tcp_clients_and_frees_port_53() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dnss");
    let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
    lab.server
        .run(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let start = || {
                let _enter = runtime.enter();
                DnsServer::start(config(), Some(leases())).expect("start the DNS server")
            };
            let dns = start();
            let mut idle = lab
                .client
                .run(|| TcpStream::connect(server).expect("tcp connect"))
                .expect("connect from the client namespace");
            // One answered query proves the server took the connection.
            let reply = tcp_query(&mut idle, 0xbeef).expect("reply");
            assert_eq!(reply[..2], [0xbe, 0xef]);
            assert_eq!(reply[reply.len() - 4..], [192, 168, 88, 50]);
            runtime.block_on(dns.stop());
            // The runtime lives on, as in the daemon: the open connection must end with
            // the server, not after its idle timeout.
            idle.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut rest = Vec::new();
            assert_eq!(idle.read_to_end(&mut rest).expect("EOF, not a timeout"), 0);
            // And port 53 is free for the next start.
            let dns = start();
            assert_eq!(
                lab.dig_short(&format!("+tcp @{SERVER_IP} static1.example.test")),
                ["192.168.88.50"]
            );
            runtime.block_on(dns.stop());
        })
        .expect("scenario in the server namespace");
}

/// One guest holding TCP connections open takes no more than its share: the next one
/// it opens is closed at once, and another guest is still served.
#[test]
fn one_client_cannot_take_every_tcp_slot() {
    use netd::dns::server::{MAX_TCP_PER_CLIENT, MAX_TCP_SERVED_PER_CLIENT};

    if !needs() {
        return;
    }
    let lab = Lab::new("dnsp");
    let server: SocketAddr = format!("{SERVER_IP}:53").parse().expect("addr");
    with_server(&lab, config(), || {
        let connect = || {
            let stream = lab
                .client
                .run(|| TcpStream::connect(server).expect("tcp connect"))
                .expect("connect from the client namespace");
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            stream
        };
        // More connections than one guest's queries are answered at once, each answered
        // once so the server surely holds them, then left idle (a resolver keeping its
        // connections open): they hold no turn, and the next query is answered at once.
        let mut held: Vec<TcpStream> = (0..=MAX_TCP_SERVED_PER_CLIENT).map(|_| connect()).collect();
        for (n, stream) in held.iter_mut().enumerate() {
            assert!(
                tcp_query(stream, n as u16).is_ok(),
                "connection {n} not served"
            );
        }
        let mut waiting = connect();
        let started = std::time::Instant::now();
        assert!(
            tcp_query(&mut waiting, 100).is_ok(),
            "idle connections held the turns"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Beyond what one guest may hold, a connection is closed at once.
        let mut more: Vec<TcpStream> = (held.len() + 1..MAX_TCP_PER_CLIENT)
            .map(|_| connect())
            .collect();
        // Each is accepted (and waits) before the next is counted.
        for stream in &mut more {
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut byte = [0u8; 1];
            assert!(
                stream.read(&mut byte).is_err(),
                "closed while within the limit"
            );
        }
        let mut over = connect();
        let mut rest = Vec::new();
        let started = std::time::Instant::now();
        assert_eq!(
            over.read_to_end(&mut rest).expect("closed, not timed out"),
            0
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The same guest's other address is another client.
        assert_eq!(
            lab.dig_short(&format!("+tcp @{SERVER_IP6} static1.example.test")),
            ["192.168.88.50"]
        );
        drop((held, more, waiting));
    });
}
