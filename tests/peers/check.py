"""Proves the instrument peers with the libraries' own clients, the way the Rust site agent will use them.

    "$(tests/peers/setup)" tests/peers/check.py        # about 25 s

Starts each server from this interpreter (the peers' venv) on a port the OS picks, talks to it over TLS
(SiLA 2: the pinned self-signed certificate; OPC UA: Basic256Sha256 SignAndEncrypt with a client
certificate), prints what a client sees, including the raw SiLAError payloads, stops each server by its PID
and closes with `N passed, N failed`. Exits non-zero if any check failed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PEERS = Path(__file__).resolve().parent
SILA_DIR = PEERS / "sila"
sys.path[:0] = [str(SILA_DIR), str(PEERS)]

# sila2 compiles SiLAFramework.proto when first imported, and fails with "duplicate file name
# SiLAFramework.proto" if protobuf's descriptor pool was imported before it: so sila2 comes first.
import sila2.framework  # noqa: E402, F401
import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402

RESULTS = {"passed": 0, "failed": 0}


def check(label: str, ok: bool, detail: str = "") -> None:
    RESULTS["passed" if ok else "failed"] += 1
    print(f"  [{'ok' if ok else 'FAIL'}] {label}{': ' + detail if detail else ''}", flush=True)


class Peer:
    """A server process: started from this interpreter, read until READY, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.log = name, log
        self.lines: list[str] = []
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, bufsize=1
        )
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("READY "):
                break
        else:
            raise RuntimeError(f"{name} exited before READY (exit {self.proc.wait()}); see {log}")
        self.startup_seconds = time.monotonic() - started
        self.ready = dict(kv.split("=", 1) for kv in self.lines[-1].split()[1:])

    def field(self, prefix: str, key: str) -> str:
        line = next(line for line in self.lines if line.startswith(prefix + " "))
        return dict(kv.split("=", 1) for kv in line.split()[1:])[key]

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - started


def show_sila_error(label: str, rpc_error: grpc.RpcError, framework_pb2) -> str:
    """Prints the gRPC status and the base64 SiLAError exactly as the server sent it; returns the kind."""
    details = rpc_error.details()
    err = framework_pb2.SiLAError.FromString(base64.standard_b64decode(details))
    kind = err.WhichOneof("error")
    print(f"    {label}: grpc status {rpc_error.code().name}, details (base64 SiLAError):")
    print(f"      {details}")
    print("      decoded: " + text_format.MessageToString(err, as_one_line=True))
    return kind


# ------------------------------------------------------------------------------------------------- SiLA 2


def check_feature_definition() -> None:
    from lxml import etree
    from sila2 import resource_dir
    from sila2.framework import Feature
    from sila2.framework.utils import feature_definition_to_proto_string

    print("\n== SiLA 2 feature definition")
    fdl = SILA_DIR / "CellExpansionController.sila.xml"
    feature = Feature(fdl.read_text())  # validates against the FDL schema (XSD)
    check("FDL valid against sila2's FeatureDefinition.xsd", True, str(feature.fully_qualified_identifier))
    xslt = etree.XSLT(etree.parse(str(Path(resource_dir) / "xsl" / "fdl-validation.xsl")))
    try:
        xslt(etree.parse(str(fdl)))
        check("FDL passes sila2's fdl-validation.xsl rules", True)
    except etree.XSLTApplyError as err:
        check("FDL passes sila2's fdl-validation.xsl rules", False, str(err))
    proto = feature_definition_to_proto_string(feature._fdl_node)
    committed = (SILA_DIR / "CellExpansionController.proto").read_text()
    generated = (
        SILA_DIR / "bioreactor_sila/generated/cellexpansioncontroller/CellExpansionController.proto"
    ).read_text()
    check("CellExpansionController.proto is what sila2 derives from the FDL now", proto == committed == generated)


def check_sila(tmp: Path) -> None:
    from sila2.framework import UndefinedExecutionError, ValidationError

    from bioreactor_sila import Client
    from bioreactor_sila.generated.cellexpansioncontroller import (
        CellExpansionControllerFeature,
        ContaminationDetected,
        InstrumentBusy,
    )

    print("\n== SiLA 2 server (sila2 0.14.0)")
    cert_path = tmp / "sila-cert.pem"
    peer = Peer(
        "sila",
        [str(SILA_DIR / "launch.py"), "--port", "0", "--cert-out", str(cert_path), "--time-compression", "3600"],
        tmp / "sila.log",
    )
    port, uuid = int(peer.ready["port"]), peer.ready["uuid"]
    print(f"  launcher printed: {peer.lines[-1]!r} after {peer.startup_seconds:.2f} s")
    cert = cert_path.read_bytes()

    client = Client("127.0.0.1", port, root_certs=cert)
    cec = client.CellExpansionController
    check(
        "TLS connect pinning the self-signed cert; SiLAService identity",
        client.SiLAService.ServerUUID.get() == uuid,
        f"{client.SiLAService.ServerName.get()!r}, type {client.SiLAService.ServerType.get()}, uuid {uuid}",
    )
    print(f"    implemented features: {[str(f) for f in client.SiLAService.ImplementedFeatures.get()]}")

    # Properties, and the unobservable command with its constraint.
    state_updates, density_updates = [], []
    state_sub = cec.InstrumentState.subscribe()
    state_sub.add_callback(state_updates.append)
    density_sub = cec.ViableCellDensity.subscribe()
    density_sub.add_callback(density_updates.append)
    print(
        f"    TemperatureSetpoint={cec.TemperatureSetpoint.get()} CurrentTemperature={cec.CurrentTemperature.get()} "
        f"InstrumentState={cec.InstrumentState.get()!r} ViableCellDensity={cec.ViableCellDensity.get()}"
    )
    cec.SetTemperatureSetpoint(36.5)
    check("SetTemperatureSetpoint(36.5) then Get_TemperatureSetpoint", cec.TemperatureSetpoint.get() == 36.5)
    # The sila2 client checks the FDL constraints itself and raises before sending anything; the raw
    # gRPC section below shows the server's own ValidationError for the same calls.
    try:
        cec.SetTemperatureSetpoint(45.0)
        check("SetTemperatureSetpoint(45) rejected", False, "no error")
    except ValidationError as err:
        check("SetTemperatureSetpoint(45) -> ValidationError (raised by the sila2 client)", True, repr(err.message))
    cec.SetTemperatureSetpoint(37.0)
    deadline = time.monotonic() + 5  # like an operator: wait for the vessel to be warm before seeding
    while cec.CurrentTemperature.get() < 36.8 and time.monotonic() < deadline:
        time.sleep(0.1)

    # A whole run: execution info, intermediate responses, result.
    started = time.monotonic()
    run = cec.RunExpansion(DurationHours=2.0, TargetDensity=10.0, BatchId="B-0001")
    print(f"    RunExpansion confirmation: uuid {run.execution_uuid}, lifetime {run.lifetime_of_execution}")
    intermediates = []
    run.subscribe_to_intermediate_responses().add_callback(intermediates.append)
    infos = []
    while not run.done:
        infos.append((run.status.name if run.status else None, run.progress, run.estimated_remaining_time))
        time.sleep(0.25)
    result = run.get_responses()
    took = time.monotonic() - started
    for info in infos[:: max(1, len(infos) // 4)]:
        print(f"    info: status={info[0]} progress={info[1]} remaining={info[2]}")
    for item in intermediates[:: max(1, len(intermediates) // 4)]:
        print(f"    intermediate: {item}")
    print(f"    result: {result} after {took:.2f} s wall")
    check(
        "RunExpansion(2 h) finished successfully in a few seconds",
        run.status.name == "finishedSuccessfully" and took < 6,
    )
    check(
        "intermediate responses arrived, density grew",
        len(intermediates) > 5
        and intermediates[-1].CurrentViableCellDensity > intermediates[0].CurrentViableCellDensity,
    )
    check(
        "final density near the 10e6/mL target, viability >= 70 %, fold > 10",
        8.0 < result.FinalViableCellDensity <= 10.5 and result.Viability >= 70 and result.FoldExpansion > 10,
    )
    check("InstrumentState Completed after the run", cec.InstrumentState.get() == "Completed")

    # Validation error at initiation (parameter constraint).
    try:
        cec.RunExpansion(DurationHours=0.0, TargetDensity=10.0, BatchId="B-0002")
        check("RunExpansion(DurationHours=0) rejected", False, "no error")
    except ValidationError as err:
        check("RunExpansion(DurationHours=0) -> ValidationError (raised by the sila2 client)", True, repr(err.message))

    # Defined execution error part-way.
    run = cec.RunExpansion(DurationHours=2.0, TargetDensity=10.0, BatchId="B-0003-CONTAMINATED")
    while not run.done:
        time.sleep(0.1)
    try:
        run.get_responses()
        check("contaminated run fails", False, "no error")
    except ContaminationDetected as err:
        check(
            "contaminated run -> ContaminationDetected (defined execution error)",
            run.status.name == "finishedWithError",
            f"status {run.status.name} at progress {run.progress}; {err.fully_qualified_identifier}: {err.message!r}",
        )
    check("InstrumentState Faulted after contamination", cec.InstrumentState.get() == "Faulted")

    # Undefined execution error, and InstrumentBusy.
    run = cec.RunExpansion(DurationHours=2.0, TargetDensity=10.0, BatchId="B-0004-SENSORFAIL")
    second = cec.RunExpansion(DurationHours=2.0, TargetDensity=10.0, BatchId="B-0005")
    try:
        while not second.done:
            time.sleep(0.05)
        second.get_responses()
        check("second concurrent run refused", False, "no error")
    except InstrumentBusy as err:
        check("second concurrent run -> InstrumentBusy", True, repr(err.message))
    while not run.done:
        time.sleep(0.1)
    try:
        run.get_responses()
        check("sensor failure run fails", False, "no error")
    except UndefinedExecutionError as err:
        check("sensor failure -> UndefinedExecutionError", True, repr(err.message))

    # Observable property subscriptions saw the runs.
    time.sleep(0.3)
    state_sub.cancel()
    density_sub.cancel()
    check(
        "Subscribe_InstrumentState delivered the transitions",
        "Running" in state_updates and "Completed" in state_updates,
        " -> ".join(dict.fromkeys(state_updates)),
    )
    check("Subscribe_ViableCellDensity streamed updates", len(density_updates) > 5, f"{len(density_updates)} values")

    check_sila_wire(port, cert, CellExpansionControllerFeature)

    # TLS: the certificate names only IP 127.0.0.1.
    channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=cert))
    try:
        grpc.channel_ready_future(channel).result(timeout=3)
        check("dialling 'localhost' fails hostname verification", False, "connected")
    except grpc.FutureTimeoutError:
        check("dialling 'localhost' (not in the SAN) fails the TLS handshake", True)
    channel.close()

    # Stop it the way a test harness would: mid-run, with a property subscription open.
    cec.RunExpansion(DurationHours=100.0, TargetDensity=10.0, BatchId="B-0009")
    open_subscription = cec.CurrentTemperature.subscribe()
    time.sleep(0.5)
    code, seconds = peer.stop()
    check(
        "SIGTERM mid-run with a subscription open stops the SiLA server promptly",
        code == 0 and seconds < 3,
        f"exit {code} after {seconds:.2f} s",
    )
    open_subscription.cancel()
    client.close()


def check_sila_wire(port: int, cert: bytes, feature) -> None:
    """The same calls with plain gRPC stubs, to show the bytes a non-sila2 client receives."""
    print("  -- raw gRPC (what the Rust client will see)")
    pb2, stub_module = feature._pb2_module, feature._grpc_module
    fw = pb2.SiLAFramework__pb2
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=cert))
    stub = stub_module.CellExpansionControllerStub(channel)
    print(f"    service: /{pb2.DESCRIPTOR.package}.CellExpansionController/…")

    def expect_error(label, call, kind):
        try:
            call()
            check(label, False, "no error")
        except grpc.RpcError as err:
            got = show_sila_error(label, err, fw)
            check(f"{label} -> {kind}", err.code() == grpc.StatusCode.ABORTED and got == kind)

    expect_error(
        "SetTemperatureSetpoint(45)",
        lambda: stub.SetTemperatureSetpoint(
            pb2.SetTemperatureSetpoint_Parameters(TemperatureSetpoint=fw.Real(value=45))
        ),
        "validationError",
    )
    expect_error(
        "RunExpansion(DurationHours=-1)",
        lambda: stub.RunExpansion(
            pb2.RunExpansion_Parameters(
                DurationHours=fw.Real(value=-1), TargetDensity=fw.Real(value=10), BatchId=fw.String(value="B-1")
            )
        ),
        "validationError",
    )
    expect_error(
        "RunExpansion with BatchId missing",
        lambda: stub.RunExpansion(
            pb2.RunExpansion_Parameters(DurationHours=fw.Real(value=1), TargetDensity=fw.Real(value=10))
        ),
        "validationError",
    )

    confirmation = stub.RunExpansion(
        pb2.RunExpansion_Parameters(
            DurationHours=fw.Real(value=2), TargetDensity=fw.Real(value=10), BatchId=fw.String(value="B-6-CONTAMINATED")
        )
    )
    print("    RunExpansion -> CommandConfirmation " + text_format.MessageToString(confirmation, as_one_line=True))
    exec_id = confirmation.commandExecutionUUID
    expect_error("RunExpansion_Result while running", lambda: stub.RunExpansion_Result(exec_id), "frameworkError")
    first_intermediate = next(iter(stub.RunExpansion_Intermediate(exec_id)))
    print(
        "    RunExpansion_Intermediate first item: " + text_format.MessageToString(first_intermediate, as_one_line=True)
    )
    infos = list(stub.RunExpansion_Info(exec_id))  # the stream ends when the command has finished
    for info in infos[:2] + infos[-2:]:
        print("    RunExpansion_Info: " + text_format.MessageToString(info, as_one_line=True))
    expect_error(
        "RunExpansion_Result (contaminated)", lambda: stub.RunExpansion_Result(exec_id), "definedExecutionError"
    )

    confirmation = stub.RunExpansion(
        pb2.RunExpansion_Parameters(
            DurationHours=fw.Real(value=1), TargetDensity=fw.Real(value=5), BatchId=fw.String(value="B-7-SENSORFAIL")
        )
    )
    list(stub.RunExpansion_Info(confirmation.commandExecutionUUID))
    expect_error(
        "RunExpansion_Result (sensor failure)",
        lambda: stub.RunExpansion_Result(confirmation.commandExecutionUUID),
        "undefinedExecutionError",
    )
    expect_error(
        "RunExpansion_Info with an unknown UUID",
        lambda: list(stub.RunExpansion_Info(fw.CommandExecutionUUID(value="00000000-0000-0000-0000-000000000000"))),
        "frameworkError",
    )

    confirmation = stub.RunExpansion(
        pb2.RunExpansion_Parameters(
            DurationHours=fw.Real(value=1), TargetDensity=fw.Real(value=5), BatchId=fw.String(value="B-8")
        )
    )
    list(stub.RunExpansion_Info(confirmation.commandExecutionUUID))
    result = stub.RunExpansion_Result(confirmation.commandExecutionUUID)
    print("    RunExpansion_Result: " + text_format.MessageToString(result, as_one_line=True))
    setpoint = stub.Get_TemperatureSetpoint(pb2.Get_TemperatureSetpoint_Parameters())
    print("    Get_TemperatureSetpoint: " + text_format.MessageToString(setpoint, as_one_line=True))
    state = next(iter(stub.Subscribe_InstrumentState(pb2.Subscribe_InstrumentState_Parameters())))
    print("    Subscribe_InstrumentState first item: " + text_format.MessageToString(state, as_one_line=True))
    check(
        "raw stubs: successful run result and property reads",
        result.FinalViableCellDensity.value > 1 and state.InstrumentState.value == "Completed",
    )
    channel.close()


# ------------------------------------------------------------------------------------------------- OPC UA


def make_client_certificate(directory: Path, name: str, app_uri: str) -> tuple[Path, Path]:
    import ipaddress

    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "Carrel checks"},
        [
            x509.UniformResourceIdentifier(app_uri),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName(socket.gethostname()),
        ],  # asyncua's client warns about its own cert otherwise
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = directory / f"{name}-cert.der", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


async def opcua_client(url: str, cert: Path, key: Path, server_cert: Path, app_uri: str):
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(url, timeout=5)
    client.application_uri = app_uri
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert),
        str(key),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    return client


async def check_opcua_session(url: str, tmp: Path, server_cert: Path, cert: Path, key: Path) -> None:
    from asyncua import Client, ua

    probe = Client(url, timeout=5)
    endpoints = await probe.connect_and_get_server_endpoints()
    offered = sorted(f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints)
    check("endpoints offered", offered == ["Basic256Sha256/SignAndEncrypt"], ", ".join(offered))

    client = await opcua_client(url, cert, key, server_cert, "urn:carrel:peers:check-client")
    async with client:
        ns = await client.get_namespace_index("urn:carrel:bioreactor")
        check(
            "Basic256Sha256 SignAndEncrypt session with the trusted client certificate", True, f"namespace index {ns}"
        )
        nodes = {
            name: client.get_node(f"ns={ns};s=Bioreactor.{name}")
            for name in ("Temperature", "pH", "DissolvedOxygen", "ViableCellDensity", "State", "TemperatureSetpoint")
        }
        before = {name: await node.read_value() for name, node in nodes.items()}
        print(f"    initial values: {before}")
        eu = await client.get_node(f"ns={ns};s=Bioreactor.Temperature.EngineeringUnits").read_value()
        print(f"    Bioreactor.Temperature.EngineeringUnits: {eu.DisplayName.Text} (UnitId {eu.UnitId})")

        await nodes["TemperatureSetpoint"].write_value(ua.Variant(36.5, ua.VariantType.Double))
        check(
            "write TemperatureSetpoint 36.5 and read it back", await nodes["TemperatureSetpoint"].read_value() == 36.5
        )
        for label, node, variant in (
            ("write TemperatureSetpoint 45", nodes["TemperatureSetpoint"], ua.Variant(45.0, ua.VariantType.Double)),
            (
                "write TemperatureSetpoint as Float",
                nodes["TemperatureSetpoint"],
                ua.Variant(36.0, ua.VariantType.Float),
            ),
            ("write Temperature (read-only)", nodes["Temperature"], ua.Variant(30.0, ua.VariantType.Double)),
        ):
            try:
                await node.write_value(variant)
                check(f"{label} rejected", False, "accepted")
            except ua.UaStatusCodeError as err:
                check(f"{label} rejected", True, type(err).__name__)
        await nodes["TemperatureSetpoint"].write_value(ua.Variant(37.0, ua.VariantType.Double))

        samples: dict[str, list] = {name: [] for name in nodes}

        class Handler:
            def datachange_notification(self, node, value, data):
                samples[node.nodeid.Identifier.split(".", 1)[1]].append(value)

        subscription = await client.create_subscription(100, Handler())
        await subscription.subscribe_data_change(list(nodes.values()))
        bioreactor = client.get_node(f"ns={ns};s=Bioreactor")
        start = client.get_node(f"ns={ns};s=Bioreactor.Start")
        deadline = time.monotonic() + 5  # like an operator: wait for the vessel to be warm before seeding
        while await nodes["Temperature"].read_value() < 36.8 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        started = await bioreactor.call_method(start, ua.Variant(2.0, ua.VariantType.Double))
        again = await bioreactor.call_method(start, ua.Variant(2.0, ua.VariantType.Double))
        check("Start(2.0) -> true, and again while running -> false", started is True and again is False)
        try:
            await bioreactor.call_method(start, ua.Variant(-1.0, ua.VariantType.Double))
            check("Start(-1) rejected", False, "accepted")
        except ua.UaStatusCodeError as err:
            check("Start(-1) rejected", True, type(err).__name__)
        deadline = time.monotonic() + 8
        while await nodes["State"].read_value() != "Completed" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        await subscription.delete()
        after = {name: await node.read_value() for name, node in nodes.items()}
        print(f"    after a 2 h run: {after}")
        print("    subscription samples: " + ", ".join(f"{k} {len(v)}" for k, v in samples.items()))
        print(f"    State notifications: {' -> '.join(samples['State'])}")
        check(
            "run completed; density grew, pH and dissolved oxygen fell",
            after["State"] == "Completed"
            and 8 < after["ViableCellDensity"] <= 10.5
            and after["pH"] < before["pH"]
            and after["DissolvedOxygen"] < before["DissolvedOxygen"],
        )
        check("data-change subscription delivered density updates", len(samples["ViableCellDensity"]) > 5)

        await bioreactor.call_method(start, ua.Variant(5.0, ua.VariantType.Double))
        await bioreactor.call_method(client.get_node(f"ns={ns};s=Bioreactor.Stop"))
        check("Start(5.0) then Stop() -> State Idle", await nodes["State"].read_value() == "Idle")

    intruder_cert, intruder_key = make_client_certificate(tmp, "intruder", "urn:carrel:peers:intruder")
    intruder = await opcua_client(url, intruder_cert, intruder_key, server_cert, "urn:carrel:peers:intruder")
    try:
        await intruder.connect()
        check("an untrusted client certificate is refused", False, "connected")
        await intruder.disconnect()
    except Exception as err:  # noqa: BLE001 - reporting what the client sees
        check("an untrusted client certificate is refused", True, f"{type(err).__name__}: {err}")

    plain = Client(url, timeout=5)
    try:
        await plain.connect()
        check("security policy None is refused", False, "connected")
        await plain.disconnect()
    except Exception as err:  # noqa: BLE001
        check("security policy None is refused", True, f"{type(err).__name__}: {err}")


def check_opcua(tmp: Path) -> None:
    print("\n== OPC UA server (asyncua 2.1.0)")
    client_cert, client_key = make_client_certificate(tmp, "client", "urn:carrel:peers:check-client")
    peer = Peer(
        "opcua",
        [
            str(PEERS / "opcua" / "server.py"),
            "--port",
            "0",
            "--pki-dir",
            str(tmp / "pki"),
            "--trust-client-cert",
            str(client_cert),
            "--time-compression",
            "3600",
        ],
        tmp / "opcua.log",
    )
    for line in peer.lines:
        print(f"  server printed: {line}")
    print(f"  (READY after {peer.startup_seconds:.2f} s)")
    url = peer.field("ENDPOINT", "url")
    server_cert = Path(peer.field("PKI", "cert"))
    asyncio.run(check_opcua_session(url, tmp, server_cert, client_cert, client_key))
    code, seconds = peer.stop()
    check("SIGTERM stops the OPC UA server promptly", code == 0 and seconds < 3, f"exit {code} after {seconds:.2f} s")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="    (log) %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # it logs every ServiceFault we provoke
    with tempfile.TemporaryDirectory(prefix="carrel-peers-") as tmp:
        for part in (check_feature_definition, check_sila, check_opcua):
            try:
                part(*([Path(tmp)] if part is not check_feature_definition else []))
            except Exception:  # noqa: BLE001 - one failed part should not hide the others
                traceback.print_exc()
                check(f"{part.__name__} ran to the end", False, f"logs in {tmp} (kept only during the run)")
                for log in Path(tmp).glob("*.log"):
                    print(f"--- {log.name}\n{log.read_text()[-3000:]}")
    print(f"\n{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
