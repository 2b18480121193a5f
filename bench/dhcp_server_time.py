#!/usr/bin/env python3
"""dhcp_server_time.py IFACE: the server's share of each DHCP lease, seen on the wire.

Captures DHCP on IFACE (the host side of the client's veth) with kernel receive
timestamps until SIGTERM, then prints one line per transaction (xid) that got an ACK:

    server_ms wire_ms

server_ms: how long the server took to answer, the OFFER after the DISCOVER it answers
plus the ACK after the REQUEST it answers; wire_ms: first DISCOVER to ACK. The rest of a
client's lease wall time is the client's own (process start, sockets, hooks).
"""
import signal
import socket
import struct
import sys

SO_TIMESTAMPNS = 35
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
DHCP_MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5


def message_type(options):
    """The DHCP message type (option 53), or None."""
    i = 0
    while i < len(options):
        code = options[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(options):
            break
        length = options[i + 1]
        if code == 53 and length == 1 and i + 2 < len(options):
            return options[i + 2]
        i += 2 + length
    return None


def parse(frame):
    """(xid, message type) of a DHCP packet in an IPv4 frame, else None."""
    if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != 17:
        return None
    ihl = (frame[0] & 0xF) * 4
    udp = frame[ihl:]
    if len(udp) < 8:
        return None
    sport, dport = struct.unpack("!HH", udp[:4])
    if {sport, dport} != {67, 68}:
        return None
    dhcp = udp[8:]
    if len(dhcp) < 240 or dhcp[236:240] != DHCP_MAGIC:
        return None
    return struct.unpack("!I", dhcp[4:8])[0], message_type(dhcp[240:])


def main():
    # ETH_P_ALL: on a bridge port, only such taps see frames before the bridge takes
    # them, and only they see the frames sent out of the port.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((sys.argv[1], ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    # Woken now and then to notice SIGTERM (Python retries an interrupted recvmsg).
    sock.settimeout(0.1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print("ready", file=sys.stderr, flush=True)
    seen = []  # (seconds, xid, type), in arrival order
    while not stop:
        try:
            frame, ancillary, _, (_, protocol, *_) = sock.recvmsg(2048, 64)
        except TimeoutError:
            continue
        packet = parse(frame) if protocol == ETH_P_IP else None
        if packet is None:
            continue
        stamp = None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                stamp = seconds + nanoseconds / 1e9
        if stamp is not None:
            seen.append((stamp, *packet))

    transactions = {}
    for stamp, xid, kind in seen:
        t = transactions.setdefault(xid, {"order": len(transactions)})
        if kind == DISCOVER:
            t.setdefault("first_discover", stamp)
            t["discover"] = stamp
        elif kind == OFFER and "discover" in t and "offer_ms" not in t:
            t["offer_ms"] = (stamp - t["discover"]) * 1e3
        elif kind == REQUEST:
            t["request"] = stamp
        elif kind == ACK and "request" in t and "ack_ms" not in t:
            t["ack_ms"] = (stamp - t["request"]) * 1e3
            t["wire_ms"] = (stamp - t.get("first_discover", t["request"])) * 1e3
    for t in sorted(transactions.values(), key=lambda t: t["order"]):
        if "ack_ms" in t:
            print(f"{t.get('offer_ms', 0.0) + t['ack_ms']:.3f} {t['wire_ms']:.3f}")


if __name__ == "__main__":
    main()
