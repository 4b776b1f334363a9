"""Starts the simulated cell-expansion bioreactor as a SiLA 2 server on 127.0.0.1.

    python launch.py --port 0 --cert-out /tmp/peer/sila-cert.pem     # TLS, self-signed certificate written out
    python launch.py --port 50052 --cert server.pem --key server.key   # TLS with a given certificate
    python launch.py --port 50052 --insecure                           # plain HTTP/2 (not SiLA-conformant)

Prints exactly one line to stdout, `READY port=<port> uuid=<uuid>`, once the server accepts calls (with
`--port 0` the port is the one the OS picked). Logs go to stderr. SIGTERM or SIGINT stops it within about a
second. SiLA Server Discovery (zeroconf/mDNS) is off: nothing is announced on the network.

Used instead of a generated `__main__` because that one ignores SIGTERM and always starts discovery.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from uuid import UUID, uuid4

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the generated package, and the shared culture model

import sila2.server.sila_server  # noqa: E402
from sila2.server.encryption import generate_self_signed_certificate  # noqa: E402

from bioreactor_sila import Server  # noqa: E402
from bioreactor_sila.feature_implementations.cellexpansioncontroller_impl import FAULTS  # noqa: E402

HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 0.5
STOP_DEADLINE_SECONDS = 3.0


class _NoDiscovery:
    """Stands in for sila2's SilaServiceBroadcaster, which opens a zeroconf (mDNS) socket as soon as a server
    object is created, even when discovery is never enabled."""

    registered_server_infos: dict = {}

    def register_server(self, *args, **kwargs) -> None:
        raise RuntimeError("SiLA Server Discovery is disabled in the Carrel test peer")

    def unregister_server(self, *args, **kwargs) -> None:
        pass


def remember_bound_ports(server: Server) -> list:
    """SilaServer drops the port number that gRPC bound; keep it, so that `--port 0` can report the real one."""
    ports = []
    for name in ("add_secure_port", "add_insecure_port"):
        original = getattr(server.grpc_server, name)

        def add_port(*args, _original=original, **kwargs):
            port = _original(*args, **kwargs)
            ports.append(port)
            return port

        setattr(server.grpc_server, name, add_port)
    return ports


def load_or_generate_certificate(args: argparse.Namespace, server_uuid: UUID) -> tuple[bytes, bytes]:
    """Returns (PEM private key, PEM certificate): the given pair, or a new self-signed one written to --cert-out."""
    if args.cert is not None:
        return args.key.read_bytes(), args.cert.read_bytes()
    # sila2's own generator: RSA 2048, SAN = IP:127.0.0.1 only, and the server UUID in the SiLA
    # extension 1.3.6.1.4.1.58583 (sila2 clients compare it with the server's ServerUUID property).
    key, cert = generate_self_signed_certificate(server_uuid, HOST)
    args.cert_out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.cert_out.with_name(args.cert_out.name + ".partial")
    partial.write_bytes(cert)
    partial.replace(args.cert_out)
    return key, cert


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1; 0 picks a free one")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="serve without TLS")
    tls.add_argument("--cert", type=Path, help="PEM certificate (chain) to serve with; needs --key")
    parser.add_argument("--key", type=Path, help="PEM private key for --cert")
    parser.add_argument(
        "--cert-out",
        type=Path,
        help="without --insecure or --cert: write the generated self-signed certificate here (PEM)",
    )
    parser.add_argument("--server-uuid", type=UUID, default=None, help="SiLA server UUID (default: random)")
    parser.add_argument("--name", default=None, help="SiLA server name")
    parser.add_argument(
        "--time-compression",
        type=float,
        default=float(os.environ.get("CARREL_PEERS_TIME_COMPRESSION", "3600")),
        help="process seconds per wall-clock second (default 3600: one process hour per second; "
        "env CARREL_PEERS_TIME_COMPRESSION)",
    )
    parser.add_argument("--fault", choices=FAULTS, help="make every RunExpansion fail half-way with this fault")
    parser.add_argument(
        "--first-intermediate-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a slow measurement: wall-clock seconds before a run sends its first intermediate response",
    )
    parser.add_argument(
        "--first-count-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a slow answer: wall-clock seconds before the first CountSample answers (later ones answer at once)",
    )
    parser.add_argument("--verbose", action="store_true", help="log sila2's INFO messages to stderr")
    args = parser.parse_args()
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if not args.insecure and args.cert is None and args.cert_out is None:
        parser.error("give --insecure, --cert/--key, or --cert-out for the generated certificate")
    if args.time_compression <= 0:
        parser.error("--time-compression must be positive")
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    sila2.server.sila_server.SilaServiceBroadcaster = _NoDiscovery
    server_uuid = args.server_uuid or uuid4()
    server = Server(
        server_uuid=server_uuid,
        name=args.name,
        time_compression=args.time_compression,
        fault=args.fault,
        first_intermediate_after=args.first_intermediate_after,
        first_count_after=args.first_count_after,
    )

    bound_ports = remember_bound_ports(server)

    try:
        if args.insecure:
            server.start_insecure(HOST, args.port, enable_discovery=False)
        else:
            key, cert = load_or_generate_certificate(args, server_uuid)
            server.start(HOST, args.port, private_key=key, cert_chain=cert, enable_discovery=False)
    except RuntimeError as err:  # e.g. the port is taken
        print(f"launch.py: cannot start: {err}", file=sys.stderr, flush=True)
        os._exit(2)

    port = bound_ports[-1] if bound_ports else args.port
    print(f"READY port={port} uuid={server_uuid}", flush=True)

    while not stop.wait(0.1):
        pass

    # Stop within a bounded time whatever the library does, then leave without waiting for its
    # non-daemon housekeeping threads (command lifetimes are tracked by sleeping threads).
    threading.Timer(STOP_DEADLINE_SECONDS, lambda: os._exit(1)).start()
    server.stop(grace_period=STOP_GRACE_SECONDS)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
