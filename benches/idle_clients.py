#!/usr/bin/env python3
"""Open N client connections to a proxy and keep them idle, for benches/memory.sh.

  idle_clients.py HOST PORT N MODE [SNI]

MODE:
  connect  connect only, send nothing (an idle connection before its first request)
  h1       send one HTTP/1.1 GET, read the whole answer, keep the connection open (keep-alive)
  tls-h1   the same over TLS (ALPN http/1.1)
  tls-h2   TLS with ALPN h2: preface, SETTINGS, one GET on stream 1, read to END_STREAM,
           then keep the connection open

Prints "ready N" once every connection is in its idle state (or "failed K" and exits 1),
then sleeps until killed. Loopback only.
"""
import asyncio
import resource
import ssl
import struct
import sys


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def read_h1_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)


def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


async def h2_get(reader, writer, authority):
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0))
    # HPACK: :method GET (2), :path / (4), :scheme https (7), :authority literal (index 1).
    block = bytes([0x82, 0x84, 0x87, 0x41, len(authority)]) + authority.encode()
    writer.write(h2_frame(0x1, 0x5, 1, block))  # END_HEADERS | END_STREAM
    await writer.drain()
    while True:
        hdr = await reader.readexactly(9)
        length = int.from_bytes(hdr[:3], "big")
        ftype, flags = hdr[3], hdr[4]
        stream = int.from_bytes(hdr[5:9], "big") & 0x7FFFFFFF
        await reader.readexactly(length)
        if ftype == 0x4 and not flags & 0x1:
            writer.write(h2_frame(0x4, 0x1, 0))  # SETTINGS ack
            await writer.drain()
        if ftype == 0x7:
            raise RuntimeError("GOAWAY")
        if stream == 1 and ftype in (0x0, 0x1) and flags & 0x1:
            return


async def one(host, port, mode, sni, conns, sem):
    async with sem:
        ctx = None
        if mode.startswith("tls"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"] if mode == "tls-h2" else ["http/1.1"])
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=sni if ctx else None
        )
        if mode in ("h1", "tls-h1"):
            writer.write(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
            await writer.drain()
            await read_h1_response(reader)
        elif mode == "tls-h2":
            await h2_get(reader, writer, sni)
        conns.append((reader, writer))


async def main():
    host, port, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sni = sys.argv[5] if len(sys.argv) > 5 else "localhost"
    raise_nofile(n)
    conns = []
    sem = asyncio.Semaphore(50)  # a handshake started waits on this client, not the proxy
    results = await asyncio.gather(
        *(one(host, port, mode, sni, conns, sem) for _ in range(n)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        print(f"failed {len(failed)}: {failed[0]!r}", flush=True)
        sys.exit(1)
    print(f"ready {len(conns)}", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
