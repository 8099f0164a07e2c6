"""A network namespace the test bed makes for itself, and ways into it.

Pod IPs are private-range addresses; packets to them must never be sent in the
machine's own network namespace. `NetNamespace` makes an empty namespace with
the pod CIDR on its loopback device, so every pod IP is local to it and nothing
sent there can leave it. Things get in three ways:

- processes: `ns.command(argv)` prefixes `nsenter --net=...` (Traefik, Prometheus
  and the vLLM stand-ins run inside);
- this process's own calls: `ns.call(fn)` runs fn on a thread that has joined the
  namespace (setns(2) changes only the calling thread's namespace), so a
  readiness probe or a request loop opens its sockets there;
- `Forwarder`: a TCP relay between a loopback port on one side and a loopback
  port on the other (a socket belongs to the namespace it was created in, and
  the relay copies bytes between the two), used for the apiserver and Prometheus.

Needs root (ip netns add). The namespace is deleted by close().
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetNamespace:
    def __init__(self, cidrs: tuple[str, ...], workers: int = 16, prefix: str = "kt"):
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.path = f"/run/netns/{self.name}"
        self.cidrs = cidrs
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def create(self) -> "NetNamespace":
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            for cidr in self.cidrs:
                # On lo, the kernel makes the whole prefix local: every pod IP answers here.
                _ip("-n", self.name, "addr", "add", cidr, "dev", "lo")
        except subprocess.CalledProcessError:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"netns-{self.name}",
                                        initializer=_enter, initargs=(self.path,))
        return self

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def call(self, fn: Callable[..., T], *args, timeout: float | None = 60, **kwargs) -> T:
        """fn(*args, **kwargs) on a thread inside the namespace."""
        assert self._pool is not None, "create() first"
        return self._pool.submit(fn, *args, **kwargs).result(timeout)

    def map(self, fn: Callable[..., T], items, timeout: float | None = 120) -> list[T]:
        """fn over items on the namespace's threads, concurrently (bounded by the pool size)."""
        assert self._pool is not None, "create() first"
        return list(self._pool.map(fn, items, timeout=timeout))

    def socket(self) -> socket.socket:
        """A TCP socket created inside the namespace (usable from any thread)."""
        return self.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class Forwarder:
    """Listens on 127.0.0.1:listen_port in one namespace, relays each connection to
    127.0.0.1:connect_port in another (None: this process's own namespace)."""

    def __init__(self, listen_ns: NetNamespace | None, listen_port: int,
                 connect_ns: NetNamespace | None, connect_port: int):
        self.listen_ns, self.connect_ns = listen_ns, connect_ns
        self.listen_port, self.connect_port = listen_port, connect_port
        self._server = self._new_socket(listen_ns)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", listen_port))
        self._server.listen(64)
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _new_socket(ns: NetNamespace | None) -> socket.socket:
        return ns.socket() if ns is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def start(self) -> "Forwarder":
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.listen_port}").start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = self._new_socket(self.connect_ns)
            try:
                upstream.connect(("127.0.0.1", self.connect_port))
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for s in (src, dst):
                    if s in self._conns:
                        self._conns.discard(s)
                        s.close()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()
