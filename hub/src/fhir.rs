//! The hospital's door: FHIR R4 (4.0.1) over the console's HTTPS listener, under
//! `/fhir`, in `application/fhir+json`.
//!
//! What it supports is exactly what `GET /fhir/metadata` lists:
//! - **Patient**, pseudonymous only: `create` checks that the resource identifies the
//!   patient by a pseudonym ([`PSEUDONYM_SYSTEM`]) and carries nothing that identifies
//!   a person (name, birth date, address, telecom, photo, contact), and answers the
//!   pseudonymous Patient; Carrel stores no patient, the pseudonym is the patient.
//!   `read` answers a pseudonym the caller has orders for.
//! - **ServiceRequest** `create`, `read`, `search` (`subject`, `status`,
//!   `_lastUpdated`, `identifier`): one order, placed exactly as the console places
//!   it (the same service call: booking, COI, audit). The request's business
//!   identifier is its one-time key, so a retried request (or `If-None-Exist`)
//!   answers the order it placed (200) and places nothing.
//! - **Task** `read`, `search` (`patient`, `status`, `_lastUpdated`, `based-on`):
//!   one per order, following it (requested, accepted, in-progress, completed at
//!   release, rejected, cancelled), with the batch state and the expected release in
//!   `businessStatus`. An integration engine follows changes by polling
//!   `_lastUpdated=gt...`.
//!
//! Callers authenticate with bearer tokens: people with the hub's sessions
//! (`carrel-hub login`, the API's `Login`), their roles checked by the service as
//! for every other door; a hospital's integration engine with a system account's
//! access token from the token endpoint (`POST /fhir/auth/token`, OAuth 2 client
//! credentials, advertised in the CapabilityStatement and at
//! `/.well-known/smart-configuration`), ordering for and seeing the orders of only
//! the physicians its account names ([`integration`]). Errors are OperationOutcome
//! resources with the matching 4xx status (the token endpoint answers OAuth 2's own
//! error objects).

use crate::app::Hub;
use crate::model::{BatchState, Order, SystemAccount, User};
use crate::service::{self, integration, Error, OrderForm};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The identifier system of patient pseudonyms.
pub const PSEUDONYM_SYSTEM: &str = "urn:carrel:patient-pseudonym";
/// The code system of products (recipe ids, such as `cd19-car-t`).
pub const PRODUCT_SYSTEM: &str = "urn:carrel:product";
/// The identifier system of treating sites.
pub const SITE_SYSTEM: &str = "urn:carrel:site";
/// The identifier systems of an order's own ids.
const ORDER_SYSTEM: &str = "urn:carrel:order";
const BATCH_SYSTEM: &str = "urn:carrel:batch";
const COI_SYSTEM: &str = "urn:carrel:coi";
/// The extension carrying a Task's expected release (the vein-to-vein clock).
const EXPECTED_RELEASE: &str = "urn:carrel:fhir:expected-release";
/// The identifier system of the hub's accounts (a requester by user name).
const ACCOUNT_SYSTEM: &str = "urn:carrel:account";
/// A business identifier becomes the order's one-time key in this UUID namespace.
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x5f0e_6c1a_2b4d_4e8f_9a7b_3c2d_1e0f_a9b8);

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

pub fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/metadata", get(metadata))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/auth/token", post(token_endpoint))
        .route("/Patient", post(create_patient))
        .route("/Patient/{id}", get(read_patient))
        .route(
            "/ServiceRequest",
            post(create_service_request).get(search_service_requests),
        )
        .route("/ServiceRequest/{id}", get(read_service_request))
        .route("/Task", get(search_tasks))
        .route("/Task/{id}", get(read_task))
        .fallback(not_supported)
}

/// A FHIR answer: a resource with its status (and a Location for a created one).
struct Answer {
    status: StatusCode,
    body: Value,
    location: Option<String>,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, FHIR_JSON)],
            self.body.to_string(),
        )
            .into_response();
        if let Some(location) = self.location.and_then(|l| l.parse().ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

fn ok(body: Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        body,
        location: None,
    }
}

/// An OperationOutcome: what is wrong, as an answer with its status.
fn outcome(status: StatusCode, code: &str, text: impl Into<String>) -> Answer {
    Answer {
        status,
        body: json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text.into()}],
        }),
        location: None,
    }
}

type Result<T> = std::result::Result<T, Answer>;

/// A service refusal as an OperationOutcome.
fn refused(error: Error) -> Answer {
    match error {
        Error::Field { message, .. } => {
            outcome(StatusCode::UNPROCESSABLE_ENTITY, "business-rule", message)
        }
        Error::Unauthenticated(m) => outcome(StatusCode::UNAUTHORIZED, "login", m),
        Error::PermissionDenied(m) => outcome(StatusCode::FORBIDDEN, "forbidden", m),
        Error::Held(m) => outcome(StatusCode::SERVICE_UNAVAILABLE, "transient", m),
        Error::Store(crate::store::Error::NotFound(m)) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{m} is not known"),
        ),
        Error::Store(crate::store::Error::Unavailable(m))
        | Error::Store(crate::store::Error::FailedPrecondition(m)) => {
            outcome(StatusCode::CONFLICT, "conflict", m)
        }
        Error::Store(crate::store::Error::Invalid(m)) => {
            outcome(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m)
        }
        other => {
            tracing::error!(error = %other, "FHIR request failed");
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the hub could not answer; try again",
            )
        }
    }
}

/// Who sends a request: a person with a session (`carrel-hub login`, the API's
/// `Login`), or an integration engine with an access token from the token endpoint.
enum Caller {
    Person(User),
    Engine(SystemAccount),
}

impl Caller {
    /// The orders the caller may see, newest first.
    async fn orders(&self, hub: &Hub) -> Result<Vec<Order>> {
        match self {
            Caller::Person(user) => service::visible_orders(hub, user, None).await,
            Caller::Engine(engine) => integration::orders(hub, engine).await,
        }
        .map_err(refused)
    }

    /// The order, if the caller may see it (another is not found, and audited).
    async fn order(&self, hub: &Hub, order_id: Uuid) -> Result<Order> {
        match self {
            Caller::Person(user) => service::visible_order(hub, user, order_id).await,
            Caller::Engine(engine) => integration::order(hub, engine, order_id).await,
        }
        .map_err(refused)
    }

    /// The order a request with this one-time key placed for the caller (a person's
    /// own, or any of an engine's physicians').
    async fn order_of_request(&self, hub: &Hub, key: Uuid) -> Result<Option<Uuid>> {
        match self {
            Caller::Person(user) => hub
                .store
                .order_of_request(&user.username, key)
                .await
                .map_err(Error::from),
            Caller::Engine(engine) => integration::order_of_request(hub, engine, key).await,
        }
        .map_err(refused)
    }
}

/// The caller of the bearer token in the request.
async fn caller(hub: &Hub, headers: &HeaderMap) -> Result<Caller> {
    let login = |text: &str| outcome(StatusCode::UNAUTHORIZED, "login", text);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| login("authenticate with \"Authorization: Bearer <token>\" (a person: carrel-hub login, or the API's Login; an integration engine: the token endpoint, POST /fhir/auth/token)"))?
        .trim();
    if let Some(engine) = integration::bearer_engine(hub, token)
        .await
        .map_err(refused)?
    {
        return Ok(Caller::Engine(engine));
    }
    service::bearer_user(hub, token)
        .await
        .map(Caller::Person)
        .map_err(refused)
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn metadata(uri: Uri, headers: HeaderMap) -> Answer {
    let param = |name: &str, kind: &str, doc: &str| json!({"name": name, "type": kind, "documentation": doc});
    ok(json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-06",
        "kind": "instance",
        "software": {"name": "Carrel hub", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Carrel: point-of-care manufacturing of autologous cell therapies"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Orders for autologous batches and their progress. Patients are pseudonymous: a resource carrying a name, birth date, address, telecom, photo or contact is refused.",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{}/auth/token", base_url(&uri, &headers))}],
                }],
                "description": "Authorization: Bearer <token>. People: a session of their hub account (carrel-hub login, or the gRPC API's Login), acting with their role. Integration engines: a system account's access token from the token endpoint (OAuth 2 client credentials, client_secret_basic or client_secret_post; /fhir/.well-known/smart-configuration), ordering for and seeing the orders of only the physicians an administrator named; the requester of a ServiceRequest names the physician.",
            },
            "resource": [
                {
                    "type": "Patient",
                    "documentation": format!("Pseudonymous only: identifier system {PSEUDONYM_SYSTEM}. Nothing is stored; the pseudonym is the patient."),
                    "interaction": [{"code": "create"}, {"code": "read"}],
                },
                {
                    "type": "ServiceRequest",
                    "documentation": format!("One order: code in {PRODUCT_SYSTEM}, subject Patient/<pseudonym>, performer Organization/<site id> (or identifier in {SITE_SYSTEM}), occurrenceDateTime the requested collection date, requester the physician (the authenticated one, or for an integration engine one it orders for). Idempotent by business identifier."),
                    "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}],
                    "conditionalCreate": true,
                    "searchParam": [
                        param("subject", "reference", "Patient/<pseudonym>"),
                        param("status", "token", "active, completed, revoked"),
                        param("_lastUpdated", "date", "with a prefix: gt, ge, lt, le, eq"),
                        param("identifier", "token", "system|value of the business identifier"),
                    ],
                },
                {
                    "type": "Task",
                    "documentation": "One per order, following it; businessStatus carries the batch state and the expected release.",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [
                        param("patient", "reference", "Patient/<pseudonym>"),
                        param("status", "token", "requested, accepted, in-progress, completed, rejected, cancelled"),
                        param("_lastUpdated", "date", "with a prefix: gt, ge, lt, le, eq"),
                        param("based-on", "reference", "ServiceRequest/<id>"),
                    ],
                },
            ],
        }],
    }))
}

/// The scopes an access token carries (SMART "system" scopes): what an engine may do
/// at this door, for the physicians of its account.
const SYSTEM_SCOPES: &str = "system/Patient.cr system/ServiceRequest.crs system/Task.rs";

/// This door's base address as the caller reached it (`https://host/fhir`): the
/// authority of the request (HTTP/2) or its Host header (HTTP/1.1).
fn base_url(uri: &Uri, headers: &HeaderMap) -> String {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}/fhir")
}

/// The SMART configuration: where an integration engine gets its access token.
async fn smart_configuration(uri: Uri, headers: HeaderMap) -> Response {
    let body = json!({
        "token_endpoint": format!("{}/auth/token", base_url(&uri, &headers)),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": SYSTEM_SCOPES.split(' ').collect::<Vec<_>>(),
        "capabilities": ["client-confidential-symmetric"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An OAuth 2 error answer (RFC 6749 section 5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        json!({"error": error, "error_description": description.into()}).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"carrel-fhir\""),
        );
    }
    response
}

/// The client id and secret of an HTTP Basic header (each form-urlencoded, RFC 6749
/// section 2.3.1), if the request has one.
fn basic_credentials(headers: &HeaderMap) -> Option<std::result::Result<(String, String), String>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some(Err(
            "the Basic credentials are not base64 of client_id:client_secret".into(),
        ));
    };
    Some(Ok((percent_decode(id), percent_decode(secret))))
}

/// The token endpoint (OAuth 2 client credentials, RFC 6749 section 4.4): an
/// integration engine's client id and secret, by HTTP Basic or in the form, for an
/// access token to use as `Authorization: Bearer` at this door.
async fn token_endpoint(
    State(hub): State<Arc<Hub>>,
    crate::client_address::Source(source): crate::client_address::Source,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match param("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; this door issues tokens for client_credentials only"),
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type=client_credentials is required (application/x-www-form-urlencoded body)",
            )
        }
    }
    let in_form = param("client_secret").map(|secret| (param("client_id").unwrap_or(""), secret));
    let (client_id, secret) = match (basic_credentials(&headers), in_form) {
        (Some(_), Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "authenticate the client one way: HTTP Basic or client_id and client_secret in the form, not both",
            )
        }
        (Some(Err(why)), None) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why),
        (Some(Ok(pair)), None) => pair,
        (None, Some((id, secret))) => (id.to_owned(), secret.to_owned()),
        (None, None) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "authenticate the client: HTTP Basic (client_id:client_secret) or client_id and client_secret in the form",
            )
        }
    };
    match integration::issue_token(&hub, &client_id, &secret, &source).await {
        Ok((token, expires_at, _)) => {
            let expires_in = (expires_at - Utc::now()).num_seconds().max(0);
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::PRAGMA, "no-cache"),
                ],
                json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "scope": SYSTEM_SCOPES,
                })
                .to_string(),
            )
                .into_response()
        }
        Err(Error::Unauthenticated(why)) => {
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why)
        }
        Err(Error::Held(why)) => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            why,
        ),
        Err(other) => {
            tracing::error!(error = %other, "token request failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the hub could not answer; try again",
            )
        }
    }
}

async fn not_supported() -> Answer {
    outcome(
        StatusCode::NOT_FOUND,
        "not-supported",
        "this hub serves Patient, ServiceRequest and Task as GET /fhir/metadata lists",
    )
}

/// Fields of a Patient that identify a person, which Carrel never stores.
const IDENTIFYING: [&str; 6] = [
    "name",
    "birthDate",
    "address",
    "telecom",
    "photo",
    "contact",
];

/// The pseudonym of a Patient resource, or why it is refused.
fn pseudonym_of_patient(patient: &Value) -> Result<String> {
    if patient["resourceType"] != "Patient" {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body must be a Patient resource",
        ));
    }
    let carried: Vec<&str> = IDENTIFYING
        .iter()
        .copied()
        .filter(|f| patient.get(*f).is_some())
        .collect();
    if !carried.is_empty() {
        return Err(outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            "security",
            format!(
                "Carrel stores no data that identifies a person: remove {} and identify the patient only by a pseudonym (identifier system {PSEUDONYM_SYSTEM})",
                carried.join(", ")
            ),
        ));
    }
    patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == PSEUDONYM_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            outcome(
                StatusCode::UNPROCESSABLE_ENTITY,
                "required",
                format!(
                    "the Patient needs an identifier in system {PSEUDONYM_SYSTEM} (the pseudonym)"
                ),
            )
        })
}

fn patient_resource(pseudonym: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": pseudonym,
        "identifier": [{"system": PSEUDONYM_SYSTEM, "value": pseudonym}],
    })
}

async fn create_patient(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Answer> {
    caller(&hub, &headers).await?;
    let patient = parse_body(&body)?;
    let pseudonym =
        service::validate_pseudonym(&pseudonym_of_patient(&patient)?).map_err(refused)?;
    Ok(Answer {
        status: StatusCode::CREATED,
        body: patient_resource(&pseudonym),
        location: Some(format!("Patient/{pseudonym}")),
    })
}

async fn read_patient(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let orders = caller.orders(&hub).await?;
    if orders.iter().any(|o| o.patient_pseudonym == id) {
        Ok(ok(patient_resource(&id)))
    } else {
        Err(outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no order you may see is for patient {id}"),
        ))
    }
}

fn parse_body(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| {
        outcome(
            StatusCode::BAD_REQUEST,
            "structure",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// The id after `Type/` in a reference, or the value of an identifier in `system`.
fn referenced(value: &Value, kind: &str, system: &str) -> Option<String> {
    if let Some(reference) = value["reference"].as_str() {
        return reference
            .strip_prefix(&format!("{kind}/"))
            .map(str::to_owned);
    }
    (value["identifier"]["system"] == system)
        .then(|| value["identifier"]["value"].as_str().map(str::to_owned))
        .flatten()
}

/// `system|value` of a token parameter or identifier.
fn token(system: &str, value: &str) -> String {
    format!("{system}|{value}")
}

/// The order's one-time key for a business identifier.
fn request_key(identifier: &str) -> Uuid {
    Uuid::new_v5(&REQUEST_NAMESPACE, identifier.as_bytes())
}

async fn create_service_request(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let request = parse_body(&body)?;
    let bad = |code: &str, text: String| outcome(StatusCode::UNPROCESSABLE_ENTITY, code, text);
    if request["resourceType"] != "ServiceRequest" {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body must be a ServiceRequest resource",
        ));
    }
    if request["status"] != "active" || request["intent"] != "order" {
        return Err(bad(
            "business-rule",
            "a new order is a ServiceRequest with status \"active\" and intent \"order\"".into(),
        ));
    }
    // A contained Patient is held to the same rule as one sent on its own.
    for contained in request["contained"].as_array().into_iter().flatten() {
        if contained["resourceType"] == "Patient" {
            pseudonym_of_patient(contained)?;
        }
    }
    let identifier = request["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| Some(token(i["system"].as_str()?, i["value"].as_str()?)))
        .ok_or_else(|| bad("required", "the ServiceRequest needs an identifier (system and value: the EHR's order number), so that a request sent again places no second order".into()))?;
    // Conditional create: If-None-Exist names the identifier to look for.
    let key = match headers.get("if-none-exist").and_then(|v| v.to_str().ok()) {
        Some(query) => {
            let wanted = query.strip_prefix("identifier=").ok_or_else(|| {
                bad(
                    "not-supported",
                    format!("If-None-Exist {query:?}: only identifier=system|value is supported"),
                )
            })?;
            request_key(&percent_decode(wanted))
        }
        None => request_key(&identifier),
    };
    // Whose order it is: a person's own; an engine names the physician.
    let requester = request
        .get("requester")
        .map(|r| referenced(r, "Practitioner", ACCOUNT_SYSTEM));
    let physician = match &caller {
        Caller::Person(user) => {
            if let Some(named) = &requester {
                if named.as_deref() != Some(user.username.as_str()) {
                    return Err(outcome(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "the requester must be you (Practitioner/{}): an order is placed by the account that sends it",
                            user.username
                        ),
                    ));
                }
            }
            user.username.clone()
        }
        Caller::Engine(engine) => {
            let named = requester.flatten().ok_or_else(|| {
                bad(
                    "required",
                    format!(
                        "requester must name the ordering physician (Practitioner/<user name> or an identifier in {ACCOUNT_SYSTEM}); {} orders for {}",
                        engine.client_id,
                        engine.physicians.join(", ")
                    ),
                )
            })?;
            integration::physician_of(&hub, engine, &named)
                .await
                .map_err(refused)?;
            named
        }
    };
    if let Some(order_id) = hub
        .store
        .order_of_request(&physician, key)
        .await
        .map_err(|e| refused(e.into()))?
    {
        let order = caller.order(&hub, order_id).await?;
        return Ok(ok(service_request(&order)));
    }
    let product = request["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"] == PRODUCT_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .ok_or_else(|| bad("required", format!("code needs a coding in system {PRODUCT_SYSTEM} naming the product (such as cd19-car-t)")))?;
    let patient =
        referenced(&request["subject"], "Patient", PSEUDONYM_SYSTEM).ok_or_else(|| {
            bad(
                "required",
                format!(
                    "subject must be Patient/<pseudonym> or an identifier in {PSEUDONYM_SYSTEM}"
                ),
            )
        })?;
    let site = request["performer"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| referenced(p, "Organization", SITE_SYSTEM))
        .ok_or_else(|| bad("required", format!("performer must name the treating site: Organization/<site id> or an identifier in {SITE_SYSTEM}")))?;
    let date = request["occurrenceDateTime"]
        .as_str()
        .map(|d| d.get(..10).unwrap_or(d).to_owned())
        .ok_or_else(|| {
            bad(
                "required",
                "occurrenceDateTime (the requested collection date) is required".into(),
            )
        })?;
    let form = OrderForm {
        patient_pseudonym: patient,
        product: product.to_owned(),
        site_id: site,
        requested_collection_date: date,
        request_id: key.to_string(),
        confirm_second_order: false,
    };
    let order = match &caller {
        Caller::Person(user) => service::create_order(&hub, user, &form).await,
        Caller::Engine(engine) => integration::create_order(&hub, engine, &physician, &form).await,
    }
    .map_err(refused)?;
    Ok(Answer {
        status: StatusCode::CREATED,
        location: Some(format!("ServiceRequest/{}", order.order_id)),
        body: service_request(&order),
    })
}

/// `%7C` and the other escapes a client may send in a header value.
fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn request_status(state: BatchState) -> &'static str {
    match state {
        BatchState::Infused => "completed",
        BatchState::Rejected | BatchState::Cancelled => "revoked",
        _ => "active",
    }
}

fn service_request(order: &Order) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "id": order.order_id.to_string(),
        "meta": {"lastUpdated": instant(order.updated_at)},
        "identifier": [
            {"system": ORDER_SYSTEM, "value": order.order_id.to_string()},
            {"system": COI_SYSTEM, "value": order.coi},
        ],
        "status": request_status(order.state),
        "intent": "order",
        "code": {"coding": [{"system": PRODUCT_SYSTEM, "code": order.recipe_id}]},
        "subject": {
            "reference": format!("Patient/{}", order.patient_pseudonym),
            "identifier": {"system": PSEUDONYM_SYSTEM, "value": order.patient_pseudonym},
        },
        "occurrenceDateTime": order.requested_collection_date,
        "authoredOn": instant(order.created_at),
        "requester": {"reference": format!("Practitioner/{}", order.physician)},
        "performer": [{
            "reference": format!("Organization/{}", order.site_id),
            "identifier": {"system": SITE_SYSTEM, "value": order.site_id},
        }],
    })
}

fn task_status(state: BatchState) -> &'static str {
    match state {
        BatchState::Ordered => "requested",
        BatchState::Accepted => "accepted",
        BatchState::InProcess | BatchState::AwaitingRelease => "in-progress",
        BatchState::Released | BatchState::HandedOver | BatchState::Infused => "completed",
        BatchState::Rejected => "rejected",
        BatchState::Cancelled => "cancelled",
    }
}

async fn task(hub: &Hub, order: &Order) -> Result<Value> {
    let (clock, _) = service::schedule::order_clock(hub, order)
        .await
        .map_err(refused)?;
    let release = clock.expected_release;
    let state = order.state.as_str().replace('_', " ");
    let done = matches!(
        order.state,
        BatchState::Released
            | BatchState::HandedOver
            | BatchState::Infused
            | BatchState::Rejected
            | BatchState::Cancelled
    );
    let mut task = json!({
        "resourceType": "Task",
        "id": order.order_id.to_string(),
        "meta": {"lastUpdated": instant(order.updated_at)},
        "identifier": [{"system": BATCH_SYSTEM, "value": order.batch_id.to_string()}],
        "basedOn": [{"reference": format!("ServiceRequest/{}", order.order_id)}],
        "status": task_status(order.state),
        "businessStatus": {
            "coding": [{"system": "urn:carrel:batch-state", "code": order.state.as_str()}],
            "text": if done {
                format!("batch {state}")
            } else {
                format!("batch {state}; expected release {}", release.format("%Y-%m-%d"))
            },
        },
        "intent": "order",
        "code": {"coding": [{"system": PRODUCT_SYSTEM, "code": order.recipe_id}]},
        "for": {"reference": format!("Patient/{}", order.patient_pseudonym)},
        "authoredOn": instant(order.created_at),
        "lastModified": instant(order.updated_at),
        "requester": {"reference": format!("Practitioner/{}", order.physician)},
        "owner": {"reference": format!("Organization/{}", order.site_id)},
    });
    if !done {
        task["extension"] = json!([{"url": EXPECTED_RELEASE, "valueDateTime": instant(release)}]);
    }
    Ok(task)
}

async fn read_service_request(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let order = visible(&hub, &caller, &id).await?;
    Ok(ok(service_request(&order)))
}

async fn read_task(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let order = visible(&hub, &caller, &id).await?;
    Ok(ok(task(&hub, &order).await?))
}

async fn visible(hub: &Hub, caller: &Caller, id: &str) -> Result<Order> {
    let order_id = Uuid::parse_str(id).map_err(|_| {
        outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{id:?} is not a resource id of this hub"),
        )
    })?;
    caller.order(hub, order_id).await
}

/// A `_lastUpdated` condition: `gt2026-12-01`, `le2026-12-01T10:00:00Z`...
fn last_updated(text: &str) -> Result<(String, DateTime<Utc>)> {
    let (prefix, rest) = match text.get(..2) {
        Some(p @ ("gt" | "ge" | "lt" | "le" | "eq")) => (p.to_owned(), &text[2..]),
        _ => ("eq".to_owned(), text),
    };
    let at = DateTime::parse_from_rfc3339(rest)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(rest, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| {
            outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("_lastUpdated {text:?} is not a date or instant with an optional gt/ge/lt/le/eq prefix"),
            )
        })?;
    Ok((prefix, at))
}

fn matches_time(cond: &(String, DateTime<Utc>), at: DateTime<Utc>) -> bool {
    match cond.0.as_str() {
        "gt" => at > cond.1,
        "ge" => at >= cond.1,
        "lt" => at < cond.1,
        "le" => at <= cond.1,
        _ => at == cond.1,
    }
}

/// The orders `user` may see that the search parameters select; `kind` names the
/// resource searched, `patient` its patient parameter.
async fn search(
    hub: &Hub,
    caller: &Caller,
    params: &[(String, String)],
    patient: &str,
    status_of: fn(BatchState) -> &'static str,
) -> Result<Vec<Order>> {
    let mut orders = caller.orders(hub).await?;
    for (name, value) in params {
        match name.as_str() {
            "_count" | "_format" | "_sort" => {}
            "_lastUpdated" => {
                let cond = last_updated(value)?;
                orders.retain(|o| matches_time(&cond, o.updated_at));
            }
            "status" => {
                let wanted: Vec<&str> = value.split(',').collect();
                orders.retain(|o| wanted.contains(&status_of(o.state)));
            }
            "identifier" if patient == "subject" => {
                let key = request_key(value);
                match caller.order_of_request(hub, key).await? {
                    Some(found) => orders.retain(|o| o.order_id == found),
                    None => orders.clear(),
                }
            }
            "based-on" if patient == "patient" => {
                let id = value.strip_prefix("ServiceRequest/").unwrap_or(value);
                orders.retain(|o| o.order_id.to_string() == id);
            }
            name if name == patient => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                orders.retain(|o| o.patient_pseudonym == id);
            }
            other => {
                return Err(outcome(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!("search parameter {other:?} is not supported; GET /fhir/metadata lists those that are"),
                ))
            }
        }
    }
    orders.sort_by_key(|o| std::cmp::Reverse(o.updated_at));
    Ok(orders)
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries.into_iter().map(|resource| json!({
            "fullUrl": format!("{kind}/{}", resource["id"].as_str().unwrap_or_default()),
            "resource": resource,
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    })
}

async fn search_service_requests(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let orders = search(&hub, &caller, &params, "subject", request_status).await?;
    Ok(ok(bundle(
        "ServiceRequest",
        orders.iter().map(service_request).collect(),
    )))
}

async fn search_tasks(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Answer> {
    let caller = caller(&hub, &headers).await?;
    let orders = search(&hub, &caller, &params, "patient", task_status).await?;
    let mut tasks = Vec::with_capacity(orders.len());
    for order in &orders {
        tasks.push(task(&hub, order).await?);
    }
    Ok(ok(bundle("Task", tasks)))
}
