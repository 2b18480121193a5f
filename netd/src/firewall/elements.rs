//! Set-element changes sent straight to the kernel as one nf_tables netlink batch.
//!
//! Starting or stopping a network only adds and deletes a handful of elements of the
//! table's hash sets. Through libnftables that cost ~0.55 ms per batch here: before every
//! command it refills its cache (eight netlink dumps) and it parses the JSON. Built here,
//! the same batch is one `sendmsg` and a few acknowledgements (~0.07 ms): a fifth of the
//! daemon's share of a `net-start`. Everything else (the table skeleton, custom NAT chains, listings)
//! still goes through libnftables: this module only knows how to encode elements whose
//! keys are interface names or concatenations of them.
//!
//! The kernel applies a batch atomically, exactly as it does libnftables' batches: if any
//! message fails, none of them takes effect.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nftables::expr::{Expression, NamedExpression};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use super::TABLE;
use super::rules::OwnedElement;

/// `IFNAMSIZ`: an `ifname` key is the name, NUL-padded to this length.
const IFNAMSIZ: usize = 16;

/// `linux/netlink.h`.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

/// `linux/netfilter/nfnetlink.h`.
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;
/// `linux/netfilter.h`: `NFPROTO_INET`, the family of `table inet kvnet`.
const NFPROTO_INET: u8 = 1;

/// `linux/netfilter/nf_tables.h`.
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// What to do with one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Add it (a no-op if it is already there).
    Add,
    /// Delete it (an error if it is not there).
    Delete,
}

/// Why a batch was not applied. The caller falls back to libnftables, which re-creates the
/// table skeleton and reports nft's own error if the change is really impossible.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The element's key is not made of interface names, so this encoder cannot carry it.
    #[error("element of set {set} has a key that is not an interface name")]
    UnsupportedKey {
        /// The set.
        set: String,
    },
    /// The socket could not be opened, or sending or receiving failed.
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a message of the batch; nothing was applied.
    #[error("{change:?} element of set {set}: {source}")]
    Refused {
        /// What the refused message did.
        change: Change,
        /// Its set.
        set: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel answered fewer messages than it was sent.
    #[error("the kernel acknowledged {got} of {expected} messages")]
    MissingAcks {
        /// Acknowledgements read.
        got: usize,
        /// Messages that asked for one.
        expected: usize,
    },
}

/// A netfilter netlink socket of the network namespace it was opened in.
#[derive(Debug)]
pub(super) struct ElementBatches {
    socket: OwnedFd,
    next_seq: u32,
}

impl ElementBatches {
    /// Opens the socket in the calling thread's network namespace.
    pub(super) fn open() -> Result<ElementBatches, Error> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| Error::Socket(e.into()))?;
        Ok(ElementBatches {
            socket,
            next_seq: 1,
        })
    }

    /// Applies `changes`, in order, to the sets of `table inet kvnet` as one transaction.
    pub(super) fn commit(&mut self, changes: &[(Change, &OwnedElement)]) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let first_seq = self.next_seq;
        let batch = encode_batch(first_seq, changes)?;
        // Begin, one message per change, end: every sequence number is used.
        self.next_seq = first_seq.wrapping_add(changes.len() as u32 + 2);
        sendto(
            self.socket.as_raw_fd(),
            &batch,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| Error::Socket(e.into()))?;
        self.read_acks(first_seq, changes)
    }

    /// Reads one acknowledgement per change. The kernel processes the whole batch inside
    /// `sendmsg`, so every answer is queued by the time this runs; a missing one means the
    /// batch was not understood, and reading without waiting turns that into an error
    /// instead of a hang.
    fn read_acks(
        &mut self,
        first_seq: u32,
        changes: &[(Change, &OwnedElement)],
    ) -> Result<(), Error> {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut acked = 0;
        let mut refused = None;
        while acked < changes.len() {
            let len = match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(Error::Socket(e.into())),
            };
            for (seq, errno) in acknowledgements(&buffer[..len]) {
                // Messages 0 and len+1 are the batch markers, which ask for no answer.
                let Some(index) = seq.wrapping_sub(first_seq).checked_sub(1) else {
                    continue;
                };
                let Some((change, element)) = changes.get(index as usize) else {
                    continue;
                };
                acked += 1;
                if errno != 0 && refused.is_none() {
                    refused = Some(Error::Refused {
                        change: *change,
                        set: element.set.clone(),
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
            }
        }
        match refused {
            Some(error) => Err(error),
            None if acked < changes.len() => Err(Error::MissingAcks {
                got: acked,
                expected: changes.len(),
            }),
            None => Ok(()),
        }
    }
}

/// The whole batch: begin marker, one `NEWSETELEM`/`DELSETELEM` per change, end marker.
fn encode_batch(first_seq: u32, changes: &[(Change, &OwnedElement)]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(128 * (changes.len() + 2));
    let subsystem = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        0,
        subsystem,
        |_| {},
    );
    for (offset, (change, element)) in changes.iter().enumerate() {
        let key = key_bytes(element)?;
        let (kind, flags) = match change {
            Change::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Change::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let seq = first_seq.wrapping_add(offset as u32 + 1);
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        message(&mut out, kind, flags, seq, NFPROTO_INET, [0, 0], |body| {
            attribute(body, NFTA_SET_ELEM_LIST_TABLE, &c_string(TABLE));
            attribute(body, NFTA_SET_ELEM_LIST_SET, &c_string(&element.set));
            nested(body, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                nested(list, NFTA_LIST_ELEM, |elem| {
                    nested(elem, NFTA_SET_ELEM_KEY, |data| {
                        attribute(data, NFTA_DATA_VALUE, &key);
                    });
                });
            });
        });
    }
    let end_seq = first_seq.wrapping_add(changes.len() as u32 + 1);
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        subsystem,
        |_| {},
    );
    Ok(out)
}

/// The key as the kernel stores it: each interface name NUL-padded to `IFNAMSIZ` (a
/// multiple of the 4-byte register size, so concatenated fields need no extra padding).
fn key_bytes(element: &OwnedElement) -> Result<Vec<u8>, Error> {
    let unsupported = || Error::UnsupportedKey {
        set: element.set.clone(),
    };
    let parts: Vec<&str> = match &element.key {
        Expression::String(name) => vec![name],
        Expression::Named(NamedExpression::Concat(parts)) => parts
            .iter()
            .map(|part| match part {
                Expression::String(name) => Ok(name.as_ref()),
                _ => Err(unsupported()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(unsupported()),
    };
    let mut key = Vec::with_capacity(IFNAMSIZ * parts.len());
    for name in parts {
        // Names were checked against the kernel's rules; one that would not fit is refused
        // here rather than truncated into someone else's key.
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(unsupported());
        }
        key.extend_from_slice(name.as_bytes());
        key.resize(key.len() + IFNAMSIZ - name.len(), 0);
    }
    Ok(key)
}

fn c_string(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(0);
    bytes
}

/// Appends one netlink message with an `nfgenmsg` header and the body `write` appends.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: [u8; 2],
    write: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, patched below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend_from_slice(&[family, NFNETLINK_V0, res_id[0], res_id[1]]);
    write(out);
    patch_length(out, start);
}

/// Appends one attribute with `payload`, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    pad(out);
}

/// Appends one nested attribute holding what `write` appends.
fn nested(out: &mut Vec<u8>, kind: u16, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]); // length, patched below
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    write(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn patch_length(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The `(sequence number, errno)` of every `NLMSG_ERROR` (acknowledgement or error) in one
/// datagram; errno 0 is success. Anything malformed ends the walk.
fn acknowledgements(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut acks = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let field = |at: usize| [rest[at], rest[at + 1], rest[at + 2], rest[at + 3]];
        let len = u32::from_ne_bytes(field(0)) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes(field(8));
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let error = i32::from_ne_bytes(field(NLMSG_HDRLEN));
            acks.push((seq, error.saturating_neg()));
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    acks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(set: &str, names: &[&str]) -> OwnedElement {
        let mut parts: Vec<Expression<'static>> = names
            .iter()
            .map(|name| Expression::String((*name).to_owned().into()))
            .collect();
        OwnedElement {
            set: set.to_owned(),
            key: if parts.len() == 1 {
                parts.remove(0)
            } else {
                Expression::Named(NamedExpression::Concat(parts))
            },
        }
    }

    #[test]
    fn keys_are_names_padded_to_ifnamsiz() {
        let single = key_bytes(&element("bridges", &["virbr0"])).unwrap();
        assert_eq!(single.len(), 16);
        assert_eq!(&single[..7], b"virbr0\0");
        assert!(single[6..].iter().all(|byte| *byte == 0));
        let pair = key_bytes(&element("same_bridge", &["virbr0", "eth0"])).unwrap();
        assert_eq!(pair.len(), 32);
        assert_eq!(&pair[16..20], b"eth0");
        for bad in ["", "sixteen-chars-xx", "nul\0inside"] {
            assert!(matches!(
                key_bytes(&element("bridges", &[bad])),
                Err(Error::UnsupportedKey { .. })
            ));
        }
        let number = OwnedElement {
            set: "bridges".into(),
            key: Expression::Number(7),
        };
        assert!(
            matches!(key_bytes(&number), Err(Error::UnsupportedKey { set }) if set == "bridges")
        );
    }

    #[test]
    fn a_batch_is_begin_messages_end_with_consecutive_sequence_numbers() {
        let add = element("bridges", &["virbr0"]);
        let delete = element("same_bridge", &["virbr0", "virbr0"]);
        let batch = encode_batch(40, &[(Change::Add, &add), (Change::Delete, &delete)]).unwrap();
        let mut headers = Vec::new();
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let flags = u16::from_ne_bytes([rest[6], rest[7]]);
            let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            headers.push((kind, flags, seq, rest[16]));
            rest = &rest[len..];
        }
        let elem = |kind| (NFNL_SUBSYS_NFTABLES << 8) | kind;
        assert_eq!(
            headers,
            [
                (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 40, 0),
                (
                    elem(NFT_MSG_NEWSETELEM),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                    41,
                    NFPROTO_INET
                ),
                (
                    elem(NFT_MSG_DELSETELEM),
                    NLM_F_REQUEST | NLM_F_ACK,
                    42,
                    NFPROTO_INET
                ),
                (NFNL_MSG_BATCH_END, NLM_F_REQUEST, 43, 0),
            ]
        );
        let text = String::from_utf8_lossy(&batch);
        assert!(text.contains("kvnet\0") && text.contains("same_bridge\0"));
    }

    #[test]
    fn acknowledgements_are_read_and_garbage_ends_the_walk() {
        let mut datagram = Vec::new();
        for (seq, error) in [(5u32, 0i32), (6, -libc::ENOENT)] {
            datagram.extend_from_slice(&36u32.to_ne_bytes());
            datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            datagram.extend_from_slice(&0u16.to_ne_bytes());
            datagram.extend_from_slice(&seq.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.extend_from_slice(&error.to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]);
        }
        assert_eq!(acknowledgements(&datagram), [(5, 0), (6, libc::ENOENT)]);
        datagram.extend_from_slice(&1000u32.to_ne_bytes());
        datagram.extend_from_slice(&[0; 12]);
        assert_eq!(acknowledgements(&datagram).len(), 2);
        assert!(acknowledgements(&[1, 2, 3]).is_empty());
    }
}
