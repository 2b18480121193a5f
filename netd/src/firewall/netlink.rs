//! The nf_tables netlink socket: batches out, acknowledgements and dumps in.
//!
//! This is the only place kvnet talks to netfilter. A change is one batch (begin marker,
//! one message per object, end marker) that the kernel applies atomically inside
//! `sendmsg`: if any message fails, none takes effect and every message is answered, the
//! failing one with its errno. Reading state back (set elements after a daemon restart,
//! other tables' chains) is a dump. Messages are built with [`Writer`]; what goes in them
//! is [`super::encode`]'s business.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// `linux/netlink.h`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// On a dump's message: the ruleset changed while it was read, so the dump may miss or
/// repeat objects.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// How many times, in all, a dump that changes keep interrupting is read before that is
/// an error.
const DUMP_ATTEMPTS: usize = 4;
pub(super) const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type bits without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg` follows the netlink header in every nfnetlink message.
const NFGENMSG_LEN: usize = 4;

/// `linux/netfilter/nfnetlink.h`.
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;

/// Room for one dump datagram: the kernel sizes them to the reader's buffer, up to 32 KiB.
const DUMP_BUFFER: usize = 64 * 1024;

/// Errors of the socket.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The socket could not be opened, or sending or receiving failed.
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a message of the batch; nothing was applied.
    #[error("{what}: {source}")]
    Refused {
        /// What the refused message did, e.g. `add chain nat-virbr0`.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel never answered the batch's last message.
    #[error("the kernel did not acknowledge the batch ({messages} messages)")]
    Unacknowledged {
        /// Messages in the batch.
        messages: usize,
    },
    /// A dump request failed (ENOENT: the table or set does not exist).
    #[error("{what}: {source}")]
    Dump {
        /// What was dumped.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno the kernel answered with, if that is what this is.
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { source, .. } | Error::Dump { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One nf_tables message of a batch: its type, flags and body (after `nfgenmsg`), plus
/// what it does, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// `NFT_MSG_*`.
    pub kind: u16,
    /// `NLM_F_*` on top of `NLM_F_REQUEST` (and `NLM_F_ACK` on a batch's last message).
    pub flags: u16,
    /// `nfgenmsg.nfgen_family`.
    pub family: u8,
    /// The attributes.
    pub body: Vec<u8>,
    /// What the message does, e.g. `add rule to chain forward`.
    pub what: String,
}

/// A netfilter netlink socket of the network namespace it was opened in.
#[derive(Debug)]
pub(super) struct Socket {
    fd: OwnedFd,
    next_seq: u32,
}

impl Socket {
    /// Opens the socket in the calling thread's network namespace.
    pub(super) fn open() -> Result<Socket, Error> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| Error::Socket(e.into()))?;
        Ok(Socket { fd, next_seq: 1 })
    }

    /// Sends `messages` as one transaction and reads the kernel's verdict.
    pub(super) fn commit(&mut self, messages: &[Message]) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let first_seq = self.next_seq;
        let batch = encode_batch(first_seq, messages);
        // Begin, one per message, end: every sequence number is used.
        self.next_seq = first_seq.wrapping_add(messages.len() as u32 + 2);
        self.send(&batch)?;
        self.read_verdict(first_seq, messages)
    }

    /// The bodies (after `nfgenmsg`) and families of every message a dump request answers,
    /// read again when a change to the ruleset interrupted it.
    pub(super) fn dump(
        &mut self,
        kind: u16,
        family: u8,
        attributes: &[u8],
        what: &str,
    ) -> Result<Vec<(u8, Vec<u8>)>, Error> {
        for _ in 1..DUMP_ATTEMPTS {
            match self.exchange(kind, NLM_F_DUMP, family, attributes, what) {
                Err(e) if e.errno() == Some(libc::EINTR) => {
                    tracing::debug!("{e}; reading it again");
                }
                result => return result,
            }
        }
        self.exchange(kind, NLM_F_DUMP, family, attributes, what)
    }

    /// The body (after `nfgenmsg`) of the one answer to a plain get request.
    pub(super) fn get(
        &mut self,
        kind: u16,
        family: u8,
        attributes: &[u8],
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        // The kernel ends a get with no done message: the acknowledgement marks the end.
        let answers = self.exchange(kind, NLM_F_ACK, family, attributes, what)?;
        answers
            .into_iter()
            .next()
            .map(|(_, body)| body)
            .ok_or_else(|| Error::Dump {
                what: what.to_owned(),
                source: io::Error::from_raw_os_error(libc::ENODATA),
            })
    }

    /// Sends one request and collects the answers until the done message or the
    /// acknowledgement.
    fn exchange(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        attributes: &[u8],
        what: &str,
    ) -> Result<Vec<(u8, Vec<u8>)>, Error> {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let mut request = Vec::with_capacity(64);
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        write_message(
            &mut request,
            kind,
            NLM_F_REQUEST | flags,
            seq,
            family,
            [0, 0],
            |body| body.extend_from_slice(attributes),
        );
        self.send(&request)?;
        let mut buffer = vec![0u8; DUMP_BUFFER];
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let len = recv(self.fd.as_raw_fd(), &mut buffer, MsgFlags::empty())
                .map_err(|e| Error::Socket(e.into()))?;
            for message in messages(&buffer[..len]) {
                if message.seq != seq {
                    continue; // a late answer to something earlier
                }
                interrupted |= message.flags & NLM_F_DUMP_INTR != 0;
                match message.kind {
                    NLMSG_DONE if interrupted => {
                        return Err(Error::Dump {
                            what: format!("{what} (changed while read)"),
                            source: io::Error::from_raw_os_error(libc::EINTR),
                        });
                    }
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = error_code(message.payload);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(Error::Dump {
                            what: what.to_owned(),
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    _ if message.payload.len() >= NFGENMSG_LEN => {
                        out.push((message.payload[0], message.payload[NFGENMSG_LEN..].to_vec()))
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        sendto(
            self.fd.as_raw_fd(),
            bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map(drop)
        .map_err(|e| Error::Socket(e.into()))
    }

    /// Reads the answers to a batch. Only its last message asks for an
    /// acknowledgement: the kernel reports every refused message whether asked or not,
    /// then the acknowledgement, and a failed commit as an error on the begin marker. So
    /// the batch went through when the last message is acknowledged with no error
    /// before it. (One acknowledgement per message cost the kernel an skb and the daemon
    /// a `recv` each: ~80 for the first network's table.) The kernel processes the batch
    /// inside `sendmsg`, so every answer is queued by the time this runs; reading without
    /// waiting turns a missing one into an error instead of a hang.
    fn read_verdict(&mut self, first_seq: u32, sent: &[Message]) -> Result<(), Error> {
        let last_seq = first_seq.wrapping_add(sent.len() as u32);
        let mut buffer = vec![0u8; 16 * 1024];
        let mut refused = None;
        let mut acknowledged = false;
        while !acknowledged {
            let len = match recv(self.fd.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(Error::Socket(e.into())),
            };
            for (seq, errno) in acknowledgements(&buffer[..len]) {
                let what = match seq.wrapping_sub(first_seq) {
                    0 => "commit the batch".to_owned(),
                    offset => match sent.get(offset as usize - 1) {
                        Some(message) => message.what.clone(),
                        None => continue, // not this batch's
                    },
                };
                if errno != 0 && refused.is_none() {
                    refused = Some(Error::Refused {
                        what,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                acknowledged |= seq == last_seq;
            }
        }
        match refused {
            Some(error) => Err(error),
            None if !acknowledged => Err(Error::Unacknowledged {
                messages: sent.len(),
            }),
            None => Ok(()),
        }
    }
}

/// The whole batch: begin marker, the messages (the last asking for an ack), end marker.
fn encode_batch(first_seq: u32, messages: &[Message]) -> Vec<u8> {
    let size: usize = messages.iter().map(|m| m.body.len() + 32).sum();
    let mut out = Vec::with_capacity(size + 64);
    let subsystem = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    write_message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        0,
        subsystem,
        |_| {},
    );
    for (offset, message) in messages.iter().enumerate() {
        let seq = first_seq.wrapping_add(offset as u32 + 1);
        let ack = if offset + 1 == messages.len() {
            NLM_F_ACK
        } else {
            0
        };
        write_message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | message.kind,
            NLM_F_REQUEST | ack | message.flags,
            seq,
            message.family,
            [0, 0],
            |body| body.extend_from_slice(&message.body),
        );
    }
    let end_seq = first_seq.wrapping_add(messages.len() as u32 + 1);
    write_message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        subsystem,
        |_| {},
    );
    out
}

/// Appends one netlink message with an `nfgenmsg` header and the body `write` appends.
fn write_message(
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
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends netlink attributes to a message body.
#[derive(Debug, Default)]
pub(super) struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
            bytes: Vec::with_capacity(256),
        }
    }

    /// The attributes written so far.
    pub(super) fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// One attribute with `payload`, padded to 4 bytes.
    pub(super) fn bytes(&mut self, kind: u16, payload: &[u8]) -> &mut Writer {
        let len = 4 + payload.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub(super) fn string(&mut self, kind: u16, text: &str) -> &mut Writer {
        let mut payload = Vec::with_capacity(text.len() + 1);
        payload.extend_from_slice(text.as_bytes());
        payload.push(0);
        self.bytes(kind, &payload)
    }

    /// A big-endian u32 attribute (nf_tables' integers are in network byte order).
    pub(super) fn be32(&mut self, kind: u16, value: u32) -> &mut Writer {
        self.bytes(kind, &value.to_be_bytes())
    }

    /// A nested attribute holding what `write` appends.
    pub(super) fn nested(&mut self, kind: u16, write: impl FnOnce(&mut Writer)) -> &mut Writer {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]); // length, patched below
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        write(self);
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

/// The attributes of a message body or nested attribute: `(type, payload)`, in order.
/// A truncated attribute ends the walk.
pub(super) fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some((kind, payload))
    })
}

/// The payload of the first attribute of type `kind`.
pub(super) fn attribute(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A string attribute's text, without its NUL.
pub(super) fn text(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// A big-endian u32 attribute's value.
pub(super) fn be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// One netlink message of a datagram.
struct Received<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of one datagram; anything malformed ends the walk.
fn messages(datagram: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push(Received {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 for an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_neg())
        .unwrap_or(libc::EPROTO)
}

/// The `(sequence number, errno)` of every `NLMSG_ERROR` (acknowledgement or error) in one
/// datagram; errno 0 is success.
fn acknowledgements(datagram: &[u8]) -> Vec<(u32, i32)> {
    messages(datagram)
        .into_iter()
        .filter(|message| message.kind == NLMSG_ERROR && message.payload.len() >= 4)
        .map(|message| (message.seq, error_code(message.payload)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, what: &str) -> Message {
        let mut body = Writer::new();
        body.string(1, "kvnet");
        Message {
            kind,
            flags: NLM_F_CREATE,
            family: 1,
            body: body.finish(),
            what: what.to_owned(),
        }
    }

    #[test]
    fn a_batch_is_begin_messages_end_with_consecutive_sequence_numbers_and_one_ack() {
        let batch = encode_batch(40, &[message(12, "add"), message(14, "delete")]);
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
        let nft = |kind| (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let flags = NLM_F_REQUEST | NLM_F_CREATE;
        assert_eq!(
            headers,
            [
                (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 40, 0),
                (nft(12), flags, 41, 1),
                (nft(14), flags | NLM_F_ACK, 42, 1),
                (NFNL_MSG_BATCH_END, NLM_F_REQUEST, 43, 0),
            ]
        );
        assert!(String::from_utf8_lossy(&batch).contains("kvnet\0"));
    }

    #[test]
    fn attributes_round_trip_through_the_writer() {
        let mut writer = Writer::new();
        writer
            .string(1, "bridges")
            .be32(2, 0x0102_0304)
            .nested(3, |inner| {
                inner.bytes(1, b"abc");
            });
        let bytes = writer.finish();
        assert_eq!(bytes.len() % 4, 0);
        let found: Vec<(u16, Vec<u8>)> = attributes(&bytes).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(found.len(), 3);
        assert_eq!(text(&found[0].1), "bridges");
        assert_eq!(be32(&found[1].1), Some(0x0102_0304));
        assert_eq!(found[2].0, 3, "the nested flag is masked off");
        assert_eq!(attribute(&found[2].1, 1), Some(&b"abc"[..]));
        // Garbage ends the walk instead of reading past the end.
        assert_eq!(attributes(&[200, 0, 1, 0, 0]).count(), 0);
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
