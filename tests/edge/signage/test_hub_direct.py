"""``Hub.offer``'s direct socket write (plain TCP transports with nothing queued) puts the same bytes on the
wire, in order, as ``transport.write``: also when the socket fills up (short writes, the rest queued by the
transport) and for a peer that went away."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from edge.signage.hub import Client, Hub, direct_send


async def _pair() -> tuple[Any, socket.socket, Any]:
    """(server-side asyncio transport, the client's blocking socket, the server)."""
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class P(asyncio.Protocol):
        def connection_made(self, tr: Any) -> None:
            got.set_result(tr)

    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    peer = socket.create_connection(("127.0.0.1", port))
    tr = await got
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fills quickly
    return tr, peer, srv


def _read_all(peer: socket.socket, n: int) -> bytes:
    buf = b""
    peer.settimeout(5)
    while len(buf) < n:
        chunk = peer.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return buf


def test_direct_writes_keep_bytes_and_order_when_the_socket_fills() -> None:
    async def main() -> None:
        tr, peer, srv = await _pair()
        send = direct_send(tr)
        assert send is not None
        hub = Hub(direct_limit=1 << 30)  # always the direct path, also with bytes queued in the transport
        for chunked in (False, True):
            c = Client(screen="s", peer="p", transport=tr, chunked=chunked, send=send)
            hub.add(c)
            frames = [b"id: %d\nevent: recommendations\ndata: %s\n\n" % (k, b"x" * (500 + 37 * k))
                      for k in range(120)]  # ~0.5 MB: far more than the socket takes without a reader
            for f in frames:
                assert hub.offer("s", f, 0.0) == 1
            assert tr.get_write_buffer_size() > 0  # short writes happened: the rest was queued in order
            want = b"".join((b"%x\r\n%b\r\n" % (len(f), f)) if chunked else f for f in frames)
            got = await asyncio.to_thread(_read_all, peer, len(want))
            assert got == want
            assert c.sent == len(frames)
            hub.remove(c)
        tr.close()
        peer.close()
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


def test_a_peer_that_went_away_is_handled_by_the_transport() -> None:
    async def main() -> None:
        tr, peer, srv = await _pair()
        hub = Hub()
        hub.add(Client(screen="s", peer="p", transport=tr, send=direct_send(tr)))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        await asyncio.sleep(0.05)
        for _ in range(3):  # the first write may still succeed; then the transport sees the error and closes
            hub.offer("s", b"data: x\n\n", 0.0)
            await asyncio.sleep(0.01)
        assert tr.is_closing()
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


def test_only_plain_tcp_transports_get_a_direct_send() -> None:
    class Fake:
        def get_extra_info(self, name: str) -> Any:
            return None

    assert direct_send(Fake()) is None
    assert direct_send(None) is None
