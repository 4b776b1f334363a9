"""A simulated cell-expansion bioreactor as an OPC UA server (asyncua), for the Carrel site agent to test against.

    python server.py --port 0 --pki-dir /tmp/peer/pki [--trust-client-cert client.der] [--allow-insecure]

Endpoint `opc.tcp://127.0.0.1:<port>/carrel/bioreactor/`, security policy Basic256Sha256 with
SignAndEncrypt (and None only with `--allow-insecure`), anonymous user identity (or, with
`--require-user NAME:PASSWORD`, only that user name and password; with `--require-user-cert CERT`, only a
user who signs in with that X.509 certificate and its key). Namespace
`urn:carrel:bioreactor`; every node of ours has a string node id, listed in NODE_IDS below and in
tests/peers/README.md.

Stdout, one line each, in this order: `PKI cert=<der> cert_pem=<pem> key=<pem>`,
`NAMESPACE uri=urn:carrel:bioreactor index=<n>`, `ENDPOINT url=<url>`, and last `READY port=<port>`
once it accepts connections. Logs go to stderr. SIGTERM or SIGINT stops it within half a second.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import CertificateUserManager, UserManager
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the shared culture model
from culture import Culture  # noqa: E402

HOST = "127.0.0.1"
NAMESPACE_URI = "urn:carrel:bioreactor"
APPLICATION_URI = "urn:carrel:peers:bioreactor-opcua"
TICK_SECONDS = 0.1
RUN_TARGET_DENSITY = 10.0  # 10^6 cells/mL; Start() takes only a duration
SETPOINT_RANGE_C = (30.0, 40.0)
STOP_SECONDS = 0.3

# name -> (initial value, variant type, unit, UNECE unit code for EngineeringUnits, description)
VARIABLES = {
    "Temperature": (25.0, ua.VariantType.Double, "degC", "CEL", "Culture temperature"),
    "pH": (7.40, ua.VariantType.Double, "", "", "Culture pH"),
    "DissolvedOxygen": (95.0, ua.VariantType.Double, "%", "P1", "Dissolved oxygen, percent of air saturation"),
    "ViableCellDensity": (0.0, ua.VariantType.Double, "10^6 cells/mL", "", "Viable cell density"),
    "State": ("Idle", ua.VariantType.String, "", "", "Idle, Running, Completed or Faulted"),
    "TemperatureSetpoint": (37.0, ua.VariantType.Double, "degC", "CEL", "Temperature setpoint, 30 to 40 (writable)"),
}
NODE_IDS = ["Bioreactor", *(f"Bioreactor.{name}" for name in VARIABLES), "Bioreactor.Start", "Bioreactor.Stop"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--pki-dir", type=Path, required=True, help="holds the server certificate and key")
    parser.add_argument(
        "--trust-client-cert",
        type=Path,
        help="DER or PEM client certificate: the only one accepted (default: accept any client certificate)",
    )
    parser.add_argument("--allow-insecure", action="store_true", help="also offer security policy None")
    parser.add_argument(
        "--require-user",
        metavar="NAME:PASSWORD",
        help="accept only this user name and password (UserName identity token); default: anonymous only",
    )
    parser.add_argument(
        "--require-user-cert",
        type=Path,
        metavar="CERT",
        help="accept only a user who signs in with this X.509 certificate (DER, or PEM by its .pem suffix) and "
        "proves they hold its key (X509 identity token, checked by asyncua's CertificateUserManager)",
    )
    parser.add_argument(
        "--time-compression",
        type=float,
        default=float(os.environ.get("CARREL_PEERS_TIME_COMPRESSION", "3600")),
        help="process seconds per wall-clock second (default 3600; env CARREL_PEERS_TIME_COMPRESSION)",
    )
    parser.add_argument("--verbose", action="store_true", help="log asyncua's INFO messages to stderr")
    args = parser.parse_args()
    if args.require_user is not None and ":" not in args.require_user:
        parser.error("--require-user takes NAME:PASSWORD")
    if args.require_user is not None and args.require_user_cert is not None:
        parser.error("--require-user and --require-user-cert exclude each other")
    if args.time_compression <= 0:
        parser.error("--time-compression must be positive")
    return args


def ensure_server_certificate(pki_dir: Path) -> tuple[Path, Path, Path]:
    """Creates a self-signed application instance certificate once; later starts reuse it."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    cert_der, cert_pem, key_pem = pki_dir / "server-cert.der", pki_dir / "server-cert.pem", pki_dir / "server-key.pem"
    if not (cert_der.exists() and cert_pem.exists() and key_pem.exists()):
        key = generate_private_key()
        cert = generate_self_signed_app_certificate(
            key,
            "Carrel bioreactor peer",
            {"organizationName": "Carrel test peers"},
            [
                x509.UniformResourceIdentifier(APPLICATION_URI),
                x509.DNSName("localhost"),
                x509.DNSName(socket.gethostname()),  # asyncua warns when the host name is missing
                x509.IPAddress(ipaddress.ip_address(HOST)),
            ],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            days=365,
        )
        key_pem.write_bytes(dump_private_key_as_pem(key))
        key_pem.chmod(0o600)
        cert_pem.write_bytes(cert.public_bytes(Encoding.PEM))
        cert_der.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_der, cert_pem, key_pem


def only_this_client(trusted: x509.Certificate):
    """A certificate validator that accepts exactly one client certificate (checked at CreateSession)."""
    trusted_der = trusted.public_bytes(Encoding.DER)

    async def validate(cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        if cert.public_bytes(Encoding.DER) != trusted_der:
            logging.warning("rejected untrusted client certificate %s", cert.subject.rfc4514_string())
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    return validate


class OneUser(UserManager):
    """Accepts exactly one user name and password; every other identity is refused."""

    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            print(f"USER-ACCEPTED name={username}", file=sys.stderr, flush=True)
            return User(role=UserRole.User, name=username)
        print(f"USER-REFUSED name={username}", file=sys.stderr, flush=True)
        return None


class OneCertificateUser(CertificateUserManager):
    """asyncua's certificate user manager (the key proof is checked before it is asked), saying what it decided."""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        user = super().get_user(iserver, username, password, certificate)
        if user is not None:
            print(f"USER-ACCEPTED cert={user.name}", file=sys.stderr, flush=True)
        else:
            print("USER-REFUSED cert", file=sys.stderr, flush=True)
        return user


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Bioreactor:
    """The simulated instrument behind the `Bioreactor` object: one culture, ticked in process time."""

    def __init__(self, server: Server, ns: int, time_compression: float) -> None:
        self.server, self.ns, self.time_compression = server, ns, time_compression
        self.culture = Culture()
        self.state = "Idle"
        self.nodes: dict = {}

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(f"Bioreactor.{name}", self.ns)

    async def build(self) -> None:
        objects = self.server.nodes.objects
        obj = await objects.add_object(ua.NodeId("Bioreactor", self.ns), ua.QualifiedName("Bioreactor", self.ns))
        for name, (value, vtype, unit, unece, description) in VARIABLES.items():
            var = await obj.add_variable(self.node_id(name), ua.QualifiedName(name, self.ns), ua.Variant(value, vtype))
            label = f"{description} ({unit})" if unit else description
            await var.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(label))))
            if unit:
                eu = ua.EUInformation(
                    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                    UnitId=_unece_unit_id(unece) if unece else -1,
                    DisplayName=ua.LocalizedText(unit),
                    Description=ua.LocalizedText(unit),
                )
                await var.add_property(
                    ua.NodeId(f"Bioreactor.{name}.EngineeringUnits", self.ns),
                    ua.QualifiedName("EngineeringUnits", 0),
                    ua.Variant(eu, ua.VariantType.ExtensionObject),
                    datatype=ua.NodeId(ua.ObjectIds.EUInformation),
                )
            self.nodes[name] = var
        await self.nodes["TemperatureSetpoint"].set_writable()
        self.server.set_attribute_value_setter(self.node_id("TemperatureSetpoint"), self._write_setpoint)

        duration = ua.Argument(
            Name="durationHours",
            DataType=ua.NodeId(ua.ObjectIds.Double),
            ValueRank=-1,
            Description=ua.LocalizedText("Planned run duration in hours of process time, > 0 and <= 336"),
        )
        started = ua.Argument(
            Name="started",
            DataType=ua.NodeId(ua.ObjectIds.Boolean),
            ValueRank=-1,
            Description=ua.LocalizedText("true if a run started; false if one was already running"),
        )
        await obj.add_method(
            self.node_id("Start"), ua.QualifiedName("Start", self.ns), self._start, [duration], [started]
        )
        await obj.add_method(self.node_id("Stop"), ua.QualifiedName("Stop", self.ns), self._stop, [], [])

    # Called by asyncua for a client's Write of TemperatureSetpoint (after its type check: Double only).
    def _write_setpoint(self, node, attr, datavalue: ua.DataValue) -> None:
        value = datavalue.Value.Value
        low, high = SETPOINT_RANGE_C
        if not low <= value <= high:
            raise ServiceError(ua.StatusCodes.BadOutOfRange)
        self.culture.setpoint_c = value
        node.attributes[attr].value = datavalue

    async def _start(self, parent: ua.NodeId, duration: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        if duration.VariantType != ua.VariantType.Double:
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        if not 0 < duration.Value <= 336:
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        # One line per accepted call, for tests that count how often a run was started.
        print(f"START-CALLED durationHours={duration.Value:g} state={self.state}", file=sys.stderr, flush=True)
        if self.state == "Running":
            return [ua.Variant(False, ua.VariantType.Boolean)]
        self.culture.seed(duration.Value, RUN_TARGET_DENSITY)
        await self._set_state("Running")
        return [ua.Variant(True, ua.VariantType.Boolean)]

    async def _stop(self, parent: ua.NodeId) -> list:
        if self.state == "Running":
            self.culture.halt()
            await self._set_state("Idle")
        return []

    async def _set_state(self, state: str) -> None:
        self.state = state
        await self.nodes["State"].write_value(ua.Variant(state, ua.VariantType.String))

    async def run(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            self.culture.advance((now - last) * self.time_compression / 3600.0)
            last = now
            if self.state == "Running" and not self.culture.growing:
                await self._set_state("Completed")
            c = self.culture
            for name, value in (
                ("Temperature", c.temperature_c),
                ("pH", c.ph),
                ("DissolvedOxygen", c.dissolved_oxygen_pct),
                ("ViableCellDensity", c.density),
            ):
                await self.nodes[name].write_value(ua.Variant(round(value, 4), ua.VariantType.Double))


def _unece_unit_id(code: str) -> int:
    """OPC UA's UnitId for a UNECE Rec. 20 common code: its ASCII letters packed big-endian into an Int32."""
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return unit_id


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    cert_der, cert_pem, key_pem = ensure_server_certificate(args.pki_dir)
    print(f"PKI cert={cert_der} cert_pem={cert_pem} key={key_pem}", flush=True)

    port = args.port or free_port()
    endpoint = f"opc.tcp://{HOST}:{port}/carrel/bioreactor/"
    if args.require_user is not None:
        name, password = args.require_user.split(":", 1)
        server = Server(user_manager=OneUser(name, password))
    elif args.require_user_cert is not None:
        users = OneCertificateUser()
        fmt = ".pem" if args.require_user_cert.suffix == ".pem" else ".der"
        await users.add_user(args.require_user_cert, name="certified-operator", format=fmt)
        server = Server(user_manager=users)
    else:
        server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name("Carrel simulated bioreactor (OPC UA)")
    await server.set_application_uri(APPLICATION_URI)
    await server.load_certificate(str(cert_der))
    await server.load_private_key(str(key_pem))
    policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    if args.allow_insecure:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    server.set_security_policy(policies)
    if args.require_user is not None:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    elif args.require_user_cert is not None:
        server.set_identity_tokens([ua.X509IdentityToken])
    else:
        server.set_identity_tokens([ua.AnonymousIdentityToken])
    if args.trust_client_cert is not None:
        data = args.trust_client_cert.read_bytes()
        trusted = (
            x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)
        )
        server.set_certificate_validator(only_this_client(trusted))

    ns = await server.register_namespace(NAMESPACE_URI)
    bioreactor = Bioreactor(server, ns, args.time_compression)
    await bioreactor.build()
    print(f"NAMESPACE uri={NAMESPACE_URI} index={ns}", flush=True)
    print(f"ENDPOINT url={endpoint}", flush=True)

    await server.start()
    print(f"READY port={port}", flush=True)
    try:
        await bioreactor.run(stop)
    finally:
        # asyncua closes the listening socket and client connections first, then waits up to 1 s for its
        # clock task; a bounded wait is enough for the former, and main() then leaves without teardown.
        try:
            await asyncio.wait_for(server.stop(), STOP_SECONDS)
        except asyncio.TimeoutError:
            pass


def main() -> int:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (~0.5 s with asyncua loaded)


if __name__ == "__main__":
    sys.exit(main())
