//! The address a web request came from (the console's and the FHIR door's), by
//! which failed sign-ins and token requests are counted.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The client's address of a request; "unknown" when the server was not told it.
pub struct Source(pub String);

/// The client's address of a request's parts.
pub fn of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(of(parts)))
    }
}
