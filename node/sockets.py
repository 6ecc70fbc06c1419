"""How the node's DICOM associations use their TCP sockets (both the SCP's and the forwarder's).

pynetdicom reads a PDU with ``AssociationSocket.recv``; :func:`install` replaces that method,
for the whole process, with :func:`recv`, which reads into one buffer and asks for quick
acknowledgements before every read (the SCP and the forwarder install it when imported). The
forwarder also turns Nagle's algorithm off on its own connections (:func:`no_delay`).

Why both: a peer that keeps Nagle's algorithm on (dcmtk 3.6.7 does unless its environment sets
``TCP_NODELAY=1``, and so Orthanc 1.10 built on it) writes a PDU's header and its body in two
writes, and holds the second until the first is acknowledged; Linux delays that
acknowledgement by up to 40 ms. Each C-STORE response from such a peer then took about 44 ms to
reach the node instead of a few (benchmarks/README.md, the node section).
"""

from __future__ import annotations

import socket
from typing import Any, cast

from pynetdicom import transport

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _quick_ack(sock: socket.socket) -> None:
    """Acknowledge what arrives at once, not after the delayed-ACK timer. Linux clears the
    flag again by itself, so it is set before every read; where the option does not exist (or
    the socket refuses it) nothing is done."""
    if _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass


def recv(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` reading straight into one buffer: the ``nr_bytes`` bytes, fewer
    when the peer closed the connection first; socket errors propagate. The original reads 4 KiB
    at a time: a 1 MiB PDU then takes 256 reads, each giving up and taking back the interpreter
    lock, which made receiving a film cost several times its decode. The buffer grows with what
    arrives (doubling), so a peer announcing a huge PDU gets no more memory than it sends."""
    sock = cast(socket.socket, self.socket)
    buf = bytearray(min(nr_bytes, 1 << 20))
    got = 0
    while got < nr_bytes:
        if got == len(buf):
            buf.extend(bytes(min(len(buf), nr_bytes - len(buf))))
        _quick_ack(sock)
        with memoryview(buf) as view:
            n = sock.recv_into(view[got:])
        if not n:
            break
        got += n
    del buf[got:]
    return buf


def no_delay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: send each PDU at once (TCP_NODELAY). With Nagle's algorithm a
    C-STORE's data set PDU smaller than a segment waits for the peer to acknowledge the command
    PDU before it, and peers delay that acknowledgement (40 ms on Linux)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def install() -> None:
    """Make :func:`recv` pynetdicom's socket read in this process (idempotent)."""
    transport.AssociationSocket.recv = recv  # type: ignore[method-assign]
