#!/usr/bin/env python3
"""A tiny authoritative DNS server for scripts/demo.sh: answers A queries for
the names given on the command line (name=ip ...), NXDOMAIN for the rest.
Standard library only; UDP only; for the demo namespace, not for production."""
import socket
import struct
import sys


def parse_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels).lower(), off
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n


def main():
    bind, zone = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    host, port = bind.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    while True:
        msg, peer = s.recvfrom(4096)
        if len(msg) < 12:
            continue
        qid, flags, qd = struct.unpack("!HHH", msg[:6])
        if qd != 1:
            continue
        name, off = parse_name(msg, 12)
        qtype, _qclass = struct.unpack("!HH", msg[off:off + 4])
        question = msg[12:off + 4]
        ip = zone.get(name)
        rcode = 0 if ip else 3
        answers = b""
        if ip and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
        ancount = 1 if answers else 0
        header = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, ancount, 0, 0)
        s.sendto(header + question + answers, peer)


if __name__ == "__main__":
    main()
