"""Where a server listens: the addresses an address stands for, and a port free on all of them.

Shared by the gRPC facade and the metrics endpoint (which also asks :attr:`Plan.loopback_only`
whether an address is this machine's alone); it needs no grpc.

grpc binds a name's addresses as one port, which it counts as bound if *any* of them is free:
``serve("localhost:P")`` beside another server holding ``127.0.0.1:P`` would take only
``[::1]:P``, and clients of ``localhost:P`` would reach one pool or the other by the address
family they try first. And grpc takes over a ``unix:`` path another server listens on. So a
server resolves the address itself (every address of a name; both loopbacks for ``localhost``),
and checks with sockets of its own that each is free -- at the port asked for, or, for port 0,
at one port free on all of them -- before grpc binds anything: a taken address is refused
(``invalid_config``) with nothing bound. (A refused bind leaves grpc's unstarted server holding
what it did bind, and an unstarted server never lets go of it.)
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass

from snakepit import _errors as errors
from snakepit._errors import Reason

_PORT_ATTEMPTS = 8  # port 0 on several addresses: fresh ports to try when one is taken on another


class Taken(Exception):
    """An address cannot be served; ``retry``: another port may do (port 0 was asked for)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Plan:
    """What ``address`` stands for: a ``unix:`` path, or hosts (IP addresses) and a port."""

    address: str
    hosts: tuple[str, ...]  # resolved IP addresses; empty for a unix: path
    port: int  # as asked for; 0: any free one

    @property
    def unix(self) -> bool:
        return not self.hosts

    @property
    def loopback_only(self) -> bool:
        """Every address is this machine's own loopback: nobody else can connect."""
        return bool(self.hosts) and all(ipaddress.ip_address(host).is_loopback for host in self.hosts)

    def targets(self, port: int) -> list[str]:
        """What grpc is asked to bind: each address with ``port``, or the unix path."""
        if self.unix:
            return [self.address]
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host in self.hosts]

    def free_port(self) -> tuple[Plan, int]:
        """The port to bind on every address, checked free on each with a socket of our own (the
        plan without the addresses this machine does not have); ``Taken`` if one is taken."""
        if self.unix:
            _check_unix_path(self.address)
            return self, 0
        for _ in range(_PORT_ATTEMPTS):
            try:
                return self._reserve()
            except Taken as taken:
                if not taken.retry:
                    raise
        raise Taken(f"no port was free on all of {', '.join(self.hosts)} after {_PORT_ATTEMPTS} tries")

    def _reserve(self) -> tuple[Plan, int]:
        held: list[socket.socket] = []
        hosts: list[str] = []
        port = self.port
        try:
            for host in self.hosts:
                try:
                    probe = _bound_socket(host, port)
                except OSError as exc:
                    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(self.hosts) > 1:
                        continue  # not an address of this machine (IPv6 off, say): nobody can hold it
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    if exc.errno == errno.EADDRINUSE:
                        raise Taken(f"{where} is taken", retry=self.port == 0 and bool(hosts)) from None
                    raise Taken(f"cannot listen on {where}: {exc.strerror}") from None
                held.append(probe)
                hosts.append(host)
                port = port or probe.getsockname()[1]
        finally:
            for probe in held:
                probe.close()  # never listened: the port is free again at once, for grpc to bind
        if not hosts:
            raise Taken("none of its addresses is this machine's")
        return Plan(self.address, tuple(hosts), self.port), port


def plan(address: str) -> Plan:
    """Resolve ``address`` (``host:port``, ``[v6]:port`` or ``unix:path``); ``invalid_config``
    if it is not one, or names no address."""
    if address.startswith("unix:"):
        return Plan(address, (), 0)
    host, _, port_text = address.rpartition(":")
    port = int(port_text) if port_text.isdigit() else -1
    if not host or not 0 <= port <= 65535:
        raise errors.validation(
            Reason.INVALID_CONFIG, f"cannot serve on {address!r}: expected host:port (port 0-65535) or unix:path", address=address
        )
    host = host.strip("[]")
    try:
        return Plan(address, (str(ipaddress.ip_address(host)),), port)
    except ValueError:
        pass
    hosts: list[str] = ["127.0.0.1", "::1"] if host == "localhost" else []
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise errors.validation(
            Reason.INVALID_CONFIG, f"cannot resolve {host!r} to serve on it: {exc}", address=address
        ) from None
    for info in infos:
        resolved = str(info[4][0])
        if resolved not in hosts:
            hosts.append(resolved)
    return Plan(address, tuple(hosts), port)


def _bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound as grpc binds (address reuse for its TIME_WAIT ports, not port sharing;
    the IPv6 wildcard dual-stack), not listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if ipaddress.ip_address(host).is_unspecified else 1)
        probe.bind((host, port))
    except BaseException:
        probe.close()
        raise
    return probe


def _check_unix_path(address: str) -> None:
    """A socket file a server still listens on is taken (grpc would take it over); one nobody
    listens on is left over, and grpc replaces it."""
    path = address.removeprefix("unix:").removeprefix("//")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise Taken(f"there is no directory {directory}")
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # nobody listens: a left-over file
    raise Taken(f"another server listens on {path}")
