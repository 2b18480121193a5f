//! A read-only TFTP server (RFC 1350, with the blksize, tsize and timeout options of
//! RFCs 2347-2349) for networks with `<tftp root=>`: what libvirt's dnsmasq does with
//! `enable-tftp` and `tftp-root`, so that guests can fetch the `<bootp>` file and
//! whatever it loads next.
//!
//! - this module: the packets, parsed and built without I/O;
//! - [`server`]: port 69 on the bridge address, and one task per transfer on its own
//!   port, files opened beneath the root only (`openat2` with `RESOLVE_BENEATH`).
//!
//! Only reads in octet mode are served; writes, netascii and mail are refused with an
//! error packet, as is anything outside the root, not a regular file, or not readable
//! by everyone: libvirt's dnsmasq serves as an unprivileged user, and kvnetd, which
//! runs as root, serves no more than any user could read.

pub mod server;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use server::TftpServer;

/// The TFTP server port.
pub const PORT: u16 = 69;
/// RFC 1350's block size, used unless the client negotiates another.
pub const DEFAULT_BLOCK_SIZE: u16 = 512;
/// Largest block size RFC 2348 allows.
pub const MAX_BLOCK_SIZE: u16 = 65464;
/// Longest retransmission timeout agreed to, in seconds: a transfer holds one of a
/// network's few transfer slots while it waits. Longer ones are declined (left out of
/// the option acknowledgement), as RFC 2347 lets a server do.
pub const MAX_TIMEOUT_SECONDS: u8 = 10;

/// What the TFTP server of one network serves; built by the manager from the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpConfig {
    /// Network name, for logs.
    pub network: String,
    /// The bridge's IPv4 address, where the server listens.
    pub listen: Ipv4Addr,
    /// The bridge: only requests that arrive on it are seen, and transfers leave through
    /// it (`SO_BINDTODEVICE`), as libvirt's dnsmasq serves only its `interface=`.
    /// Otherwise a guest of another network, or anyone who can route to the address,
    /// could read the root.
    pub interface: String,
    /// The network's IPv4 subnets, and those its `<route>`s reach: requests from
    /// elsewhere (a guest spoofing a third party's address, to have the files sent
    /// there) get no answer.
    pub subnets: Vec<ipnet::Ipv4Net>,
    /// `<tftp root=>`: the only directory files are served from.
    pub root: PathBuf,
}

/// Errors starting a TFTP server; each names the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root directory cannot be opened.
    #[error("cannot open TFTP root {} of network '{network}'", root.display())]
    Root {
        /// Network name.
        network: String,
        /// The configured root.
        root: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The root, or a directory above it, cannot be searched by every user, so no file
    /// beneath it could be served.
    #[error(
        "TFTP root {} of network '{network}' is not reachable by every user: {} is not world-searchable",
        root.display(),
        directory.display()
    )]
    RootNotPublic {
        /// Network name.
        network: String,
        /// The configured root.
        root: PathBuf,
        /// The first directory on the way that others may not search.
        directory: PathBuf,
    },
    /// The socket cannot be set up.
    #[error("cannot {step} for TFTP of network '{network}' on {listen}")]
    Socket {
        /// Network name.
        network: String,
        /// The listening address.
        listen: Ipv4Addr,
        /// What failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// There is no tokio runtime to run the server on.
    #[error("no async runtime for the TFTP server of network '{network}'")]
    NoRuntime {
        /// Network name.
        network: String,
    },
}

/// Opcodes (RFC 1350, 2347).
const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: see the message.
    Undefined = 0,
    /// 1: no such file.
    FileNotFound = 1,
    /// 2: not allowed.
    AccessViolation = 2,
    /// 4: not a request this server serves.
    IllegalOperation = 4,
    /// 8: the options cannot be agreed on (RFC 2347).
    BadOption = 8,
}

/// A read request, as far as this server cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The file as asked for, `\` read as `/` (Windows boot loaders' separator, as
    /// dnsmasq reads it); [`path_in_root`] makes it relative to the root.
    pub file: String,
    /// `blksize` asked for, already checked to be in RFC 2348's range.
    pub block_size: Option<u16>,
    /// `tsize` asked for (the client wants the file's size).
    pub transfer_size: bool,
    /// `timeout` asked for and agreed to, in seconds (1 to [`MAX_TIMEOUT_SECONDS`]).
    pub timeout: Option<u8>,
}

/// Why a request is refused: the error packet to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The TFTP error code.
    pub code: ErrorCode,
    /// The message for the client.
    pub message: &'static str,
}

/// Parses what a client sent to port 69. `Ok(None)` for packets that deserve no answer
/// (too short to be a request, or not one sent to port 69 at all, e.g. a stray ACK).
pub fn parse_request(packet: &[u8]) -> Result<Option<ReadRequest>, Refusal> {
    let refuse = |code, message| Err(Refusal { code, message });
    let Some((opcode, body)) = split_opcode(packet) else {
        return Ok(None);
    };
    match opcode {
        RRQ => {}
        WRQ => return refuse(ErrorCode::AccessViolation, "this server is read-only"),
        DATA | ACK | ERROR | OACK => return Ok(None),
        _ => return refuse(ErrorCode::IllegalOperation, "unknown request"),
    }
    // filename NUL mode NUL [option NUL value NUL]...
    let Some(fields) = body.strip_suffix(&[0]) else {
        return refuse(ErrorCode::IllegalOperation, "malformed request");
    };
    let mut fields = fields.split(|&b| b == 0);
    let (Some(file), Some(mode)) = (fields.next(), fields.next()) else {
        return refuse(ErrorCode::IllegalOperation, "malformed request");
    };
    let Ok(file) = std::str::from_utf8(file) else {
        return refuse(ErrorCode::FileNotFound, "file name is not UTF-8");
    };
    if !mode.eq_ignore_ascii_case(b"octet") {
        return refuse(ErrorCode::IllegalOperation, "only octet mode is served");
    }
    let mut request = ReadRequest {
        file: file.replace('\\', "/"),
        block_size: None,
        transfer_size: false,
        timeout: None,
    };
    while let Some(name) = fields.next() {
        let Some(value) = fields.next() else {
            return refuse(ErrorCode::BadOption, "option without a value");
        };
        let value = std::str::from_utf8(value).ok();
        let number = value.and_then(|v| v.parse::<u64>().ok());
        // Unknown options are left out of the answer (RFC 2347).
        if name.eq_ignore_ascii_case(b"blksize") {
            match number {
                Some(size @ 8..) => {
                    request.block_size = Some(
                        u16::try_from(size.min(u64::from(MAX_BLOCK_SIZE)))
                            .unwrap_or(MAX_BLOCK_SIZE),
                    );
                }
                _ => return refuse(ErrorCode::BadOption, "invalid blksize"),
            }
        } else if name.eq_ignore_ascii_case(b"tsize") {
            request.transfer_size = true;
        } else if name.eq_ignore_ascii_case(b"timeout") {
            match number.and_then(|n| u8::try_from(n).ok()) {
                Some(seconds @ 1..=MAX_TIMEOUT_SECONDS) => request.timeout = Some(seconds),
                Some(1..) => {}
                _ => return refuse(ErrorCode::BadOption, "invalid timeout"),
            }
        }
    }
    Ok(Some(request))
}

/// Splits off the 2-byte opcode.
/// `file`, a requested name, relative to `root`: an absolute name under the root (the
/// `<bootp file=>` written as a full path, which the DHCP reply hands out as it is) has
/// the root taken off, as dnsmasq takes it; any other loses its leading slashes.
pub fn path_in_root<'a>(file: &'a str, root: &std::path::Path) -> &'a str {
    let under_root = root
        .to_str()
        .map(|root| root.trim_end_matches('/'))
        .filter(|root| !root.is_empty())
        .and_then(|root| file.strip_prefix(root))
        .filter(|rest| rest.starts_with('/'));
    under_root.unwrap_or(file).trim_start_matches('/')
}

fn split_opcode(packet: &[u8]) -> Option<(u16, &[u8])> {
    match packet {
        [high, low, rest @ ..] => Some((u16::from_be_bytes([*high, *low]), rest)),
        _ => None,
    }
}

/// The block number a client's packet acknowledges; `Err` carries an error packet's
/// code, `Ok(None)` anything else.
pub fn parse_reply(packet: &[u8]) -> Result<Option<u16>, u16> {
    match split_opcode(packet) {
        Some((ACK, [high, low, ..])) => Ok(Some(u16::from_be_bytes([*high, *low]))),
        Some((ERROR, [high, low, ..])) => Err(u16::from_be_bytes([*high, *low])),
        _ => Ok(None),
    }
}

/// A DATA packet.
pub fn data(block: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

/// An OACK packet with the options accepted.
pub fn option_ack(options: &[(&str, u64)]) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut out = RRQ.to_be_bytes().to_vec();
        for field in fields {
            out.extend_from_slice(field.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn read_requests_and_their_options_are_parsed() {
        assert_eq!(
            parse_request(&rrq(&["/pxelinux.0", "OCTET"])).unwrap(),
            Some(ReadRequest {
                file: "/pxelinux.0".into(),
                block_size: None,
                transfer_size: false,
                timeout: None,
            })
        );
        let with_options = rrq(&[
            "boot/ipxe.efi",
            "octet",
            "tsize",
            "0",
            "BLKSIZE",
            "1468",
            "windowsize",
            "4",
            "timeout",
            "3",
        ]);
        assert_eq!(
            parse_request(&with_options).unwrap(),
            Some(ReadRequest {
                file: "boot/ipxe.efi".into(),
                block_size: Some(1468),
                transfer_size: true,
                timeout: Some(3),
            })
        );
        // A block size past RFC 2348's limit is lowered to it; a long timeout is declined.
        let big = rrq(&["f", "octet", "blksize", "100000", "timeout", "200"]);
        let big = parse_request(&big).unwrap().unwrap();
        assert_eq!((big.block_size, big.timeout), (Some(MAX_BLOCK_SIZE), None));
        // Windows boot loaders separate with backslashes.
        let windows = parse_request(&rrq(&["\\Boot\\BCD", "octet"]))
            .unwrap()
            .unwrap();
        assert_eq!(windows.file, "/Boot/BCD");
    }

    #[test]
    fn names_are_taken_relative_to_the_root_and_a_full_path_under_it_too() {
        let root = std::path::Path::new("/srv/tftp/");
        for (file, relative) in [
            ("pxelinux.0", "pxelinux.0"),
            ("/pxelinux.0", "pxelinux.0"),
            ("//boot/x", "boot/x"),
            ("/srv/tftp/pxelinux.0", "pxelinux.0"),
            ("/srv/tftp//boot/x", "boot/x"),
            // Not under it: only its leading slash goes (and the lookup stays beneath
            // the root).
            ("/srv/tftpx/y", "srv/tftpx/y"),
            ("/etc/passwd", "etc/passwd"),
        ] {
            assert_eq!(path_in_root(file, root), relative, "{file}");
        }
    }

    #[test]
    fn what_is_not_served_is_refused_with_a_reason() {
        let refused = |packet: &[u8]| parse_request(packet).unwrap_err().code;
        let mut wrq = rrq(&["f", "octet"]);
        wrq[1] = 2;
        assert_eq!(refused(&wrq), ErrorCode::AccessViolation);
        assert_eq!(
            refused(&rrq(&["f", "netascii"])),
            ErrorCode::IllegalOperation
        );
        assert_eq!(refused(&rrq(&["f"])), ErrorCode::IllegalOperation);
        assert_eq!(
            refused(&rrq(&["f", "octet", "blksize", "7"])),
            ErrorCode::BadOption
        );
        assert_eq!(
            refused(&rrq(&["f", "octet", "timeout", "0"])),
            ErrorCode::BadOption
        );
        assert_eq!(
            refused(&rrq(&["f", "octet", "tsize"])),
            ErrorCode::BadOption
        );
        // Not NUL-terminated.
        assert_eq!(refused(&[0, 1, b'f']), ErrorCode::IllegalOperation);
        assert_eq!(refused(&[0, 9, 0]), ErrorCode::IllegalOperation);
        // No answer to noise or to packets that belong to transfers.
        assert_eq!(parse_request(&[0]).unwrap(), None);
        assert_eq!(parse_request(&[0, 4, 0, 1]).unwrap(), None);
    }

    #[test]
    fn packets_are_built_as_rfc_1350_lays_them_out() {
        let mut out = Vec::new();
        data(258, b"abc", &mut out);
        assert_eq!(out, [0, 3, 1, 2, b'a', b'b', b'c']);
        assert_eq!(
            error(ErrorCode::FileNotFound, "no"),
            [0, 5, 0, 1, b'n', b'o', 0]
        );
        assert_eq!(
            option_ack(&[("blksize", 1468), ("tsize", 7)]),
            b"\0\x06blksize\x001468\0tsize\x007\0".to_vec()
        );
        assert_eq!(parse_reply(&[0, 4, 1, 2]), Ok(Some(258)));
        assert_eq!(parse_reply(&[0, 5, 0, 2, b'x', 0]), Err(2));
        assert_eq!(parse_reply(&[0, 3, 0, 1]), Ok(None));
    }
}
