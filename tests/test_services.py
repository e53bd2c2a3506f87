"""``altlas-dask up``'s port probe (:func:`altlas_dask.ops.services.port_in_use`) on real sockets."""

from __future__ import annotations

import socket

from altlas_dask.ops.services import port_in_use


def listening_socket() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado's bind_sockets (Dask's servers)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_a_listening_port_is_in_use():
    with listening_socket() as server:
        assert port_in_use(f"tcp://127.0.0.1:{server.getsockname()[1]}")


def test_a_stopped_servers_time_wait_connections_leave_the_port_free():
    """After a stop, only TIME_WAIT sockets hold the port; Dask binds it again at once (SO_REUSEADDR), so must
    the probe: without SO_REUSEADDR it said "in use" for about 60 s after every `altlas-dask up` stopped."""
    server = listening_socket()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection (on `port`) enters TIME_WAIT
    client.recv(1)  # the FIN arrived
    client.close()
    server.close()
    assert not port_in_use(f"127.0.0.1:{port}")
    with socket.socket() as again:  # and a server really can bind it again, as Dask's does
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_port_zero_and_non_ascii_ports_are_never_in_use():
    assert not port_in_use("127.0.0.1:0")
    assert not port_in_use("127.0.0.1:²")  # not a port number: the server's own parser reports it
