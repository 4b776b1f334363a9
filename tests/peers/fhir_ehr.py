"""An EHR integration engine for the FHIR tests, written with FHIR clients we did not
write: fhirpy (orders, searches) and the SMART on FHIR fhirclient (reads). Every
resource the hub answers is validated with the fhir.resources R4B models. A system
account gets its access token with requests-oauthlib (OAuth 2 client credentials).

    fhir_ehr.py BASE_URL TOKEN COMMAND [ARGS...]
    fhir_ehr.py BASE_URL - token CLIENT_ID CLIENT_SECRET basic|post

Prints one JSON document: what the command found. The hub's CA is taken from
REQUESTS_CA_BUNDLE (requests) and SSL_CERT_FILE (aiohttp) by the caller.
"""
import json
import sys

import requests
from fhir.resources.R4B import get_fhir_model_class
from fhirclient import client as smart_client
from fhirclient.models.servicerequest import ServiceRequest as SmartServiceRequest
from fhirclient.models.task import Task as SmartTask
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error
from requests_oauthlib import OAuth2Session

PSEUDONYM = "urn:carrel:patient-pseudonym"
PRODUCT = "urn:carrel:product"
SITE = "urn:carrel:site"


def validated(resource):
    """The resource, after the fhir.resources R4B model of its type accepted it."""
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)
    return resource


def main():
    base, token, command, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    auth = f"Bearer {token}"
    fhir = SyncFHIRClient(base, authorization=auth)
    out = {}
    if command == "token":
        # OAuth 2 client credentials; the token endpoint found where the hub says.
        client_id, secret, how = args
        smart = requests.get(f"{base}/.well-known/smart-configuration").json()
        session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
        try:
            if how == "basic":
                token = session.fetch_token(smart["token_endpoint"], client_id=client_id,
                                            client_secret=secret)
            else:
                token = session.fetch_token(smart["token_endpoint"], client_id=client_id,
                                            client_secret=secret, include_client_id=True,
                                            auth=False)
            out = {"granted": True, "token": dict(token)}
        except OAuth2Error as refusal:
            out = {"granted": False, "error": refusal.error, "status": refusal.status_code,
                   "description": refusal.description}
    elif command == "metadata":
        # No token needed for the CapabilityStatement.
        answer = requests.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"})
        out = {"status": answer.status_code, "content_type": answer.headers["Content-Type"],
               "resource": validated(answer.json())}
    elif command == "order":
        # An integration engine names the physician: a fifth argument.
        patient, site, date, ident = args[:4]
        extra = {"requester": {"reference": f"Practitioner/{args[4]}"}} if len(args) > 4 else {}
        order = fhir.resource(
            "ServiceRequest",
            status="active",
            intent="order",
            identifier=[{"system": "urn:ehr:order-number", "value": ident}],
            code={"coding": [{"system": PRODUCT, "code": "cd19-car-t"}]},
            subject={"reference": f"Patient/{patient}"},
            performer=[{"identifier": {"system": SITE, "value": site}}],
            occurrenceDateTime=date,
            **extra,
        )
        order.save()
        out = validated(order.serialize())
    elif command == "conditional-order":
        # A retry through the raw API with If-None-Exist, as some engines send it.
        patient, site, date, ident = args
        body = {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "urn:ehr:order-number", "value": ident}],
            "code": {"coding": [{"system": PRODUCT, "code": "cd19-car-t"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": f"Organization/{site}"}],
            "occurrenceDateTime": date,
        }
        answer = requests.post(f"{base}/ServiceRequest", json=body, headers={
            "Authorization": auth, "Content-Type": "application/fhir+json",
            "If-None-Exist": f"identifier=urn:ehr:order-number|{ident}"})
        out = {"status": answer.status_code, "resource": validated(answer.json())}
    elif command == "refused":
        # What the hub refuses, and how: (status, OperationOutcome diagnostics).
        kind, body = args[0], json.loads(args[1])
        answer = requests.post(f"{base}/{kind}", json=body, headers={
            "Authorization": auth, "Content-Type": "application/fhir+json"})
        resource = validated(answer.json())
        out = {"status": answer.status_code, "resourceType": resource["resourceType"],
               "diagnostics": [i.get("diagnostics", "") for i in resource.get("issue", [])]}
    elif command == "get":
        # A read as the raw API answers it: (status, resource or OperationOutcome).
        kind, ident = args
        answer = requests.get(f"{base}/{kind}/{ident}", headers={
            "Authorization": auth, "Accept": "application/fhir+json"})
        out = {"status": answer.status_code, "resource": validated(answer.json())}
    elif command == "pseudonymous-patient":
        patient = fhir.resource("Patient", identifier=[{"system": PSEUDONYM, "value": args[0]}])
        patient.save()
        out = validated(patient.serialize())
    elif command == "read":
        # The SMART client, with the hub's token on its session.
        smart = smart_client.FHIRClient(settings={"app_id": "carrel-ehr-test", "api_base": base})
        smart.server.session.headers["Authorization"] = auth
        kind, ident = args
        model = {"ServiceRequest": SmartServiceRequest, "Task": SmartTask}[kind]
        resource = model.read(ident, smart.server).as_json()
        out = validated(resource)
    elif command == "search":
        kind, params = args[0], json.loads(args[1])
        found = fhir.resources(kind).search(**params).fetch_all()
        out = [validated(r.serialize()) for r in found]
    elif command == "unauthenticated":
        try:
            SyncFHIRClient(base, authorization="Bearer not-a-token").resources("Task").fetch()
            out = {"refused": False}
        except (AuthorizationError, OperationOutcome) as outcome:
            out = {"refused": True, "text": str(outcome)}
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
