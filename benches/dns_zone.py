#!/usr/bin/env python3
"""A tiny authoritative DNS server for benches (UDP, A records only, from the command line).

Usage: benches/dns_zone.py 127.0.0.1:18053 a.bench=127.0.0.1,127.0.0.2 b.bench=127.0.0.9 ...
Answers A queries for the names given (TTL 30 s), NXDOMAIN for other names, an empty answer
for other types (AAAA), until killed. Standard library only.
"""
import socket
import struct
import sys

TTL = 30


def parse_name(msg, off):
    labels = []
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1:off + 1 + n].decode().lower())
        off += 1 + n
    return ".".join(labels), off + 1


def answer(msg, zone):
    ident, flags = struct.unpack("!HH", msg[:4])
    name, end = parse_name(msg, 12)
    qtype, _ = struct.unpack("!HH", msg[end:end + 4])
    question = msg[12:end + 4]
    rd = flags & 0x0100
    if name not in zone:
        return struct.pack("!HHHHHH", ident, 0x8400 | rd | 3, 1, 0, 0, 0) + question
    ips = zone[name] if qtype == 1 else []
    out = struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, len(ips), 0, 0) + question
    for ip in ips:
        out += struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton(ip)
    return out


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    host, port = argv[0].rsplit(":", 1)
    zone = {}
    for spec in argv[1:]:
        name, ips = spec.split("=", 1)
        zone[name.lower().rstrip(".")] = ips.split(",")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    while True:
        msg, peer = s.recvfrom(512)
        try:
            s.sendto(answer(msg, zone), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
