//! A webhook receiver of the tests' own: an HTTP server on a fixed port that checks
//! the `Carrel-Signature` of each request with the subscription's secret and records
//! what it took. It can be down (not listening), answer 500, or answer too slowly.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Ok,
    /// 500 Internal Server Error.
    Error,
    /// 200, but only after this long.
    Slow(Duration),
}

/// A request the receiver took (answered 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    /// The path after `/hook/`: which subscription it was for.
    pub hook: String,
    pub notification_id: String,
    pub body: serde_json::Value,
    /// The signature verified with the hook's secret, and its time is recent.
    pub signature_valid: bool,
}

#[derive(Default)]
struct Inner {
    answer: Option<Answer>,
    secrets: HashMap<String, String>,
    received: Vec<Received>,
    /// Requests answered with an error or too slowly.
    refused: usize,
}

pub struct Receiver {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks `t=<t>,v1=<hex>` against HMAC-SHA256(secret, "<t>.<body>"), as README
/// "Notifications" tells a receiver to.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn hook(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answer = lock(&inner).answer.unwrap_or(Answer::Ok);
    match answer {
        Answer::Error => {
            lock(&inner).refused += 1;
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Answer::Slow(delay) => {
            lock(&inner).refused += 1;
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
        Answer::Ok => {
            let header = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let mut inner = lock(&inner);
            let secret = inner.secrets.get(&name).cloned().unwrap_or_default();
            let received = Received {
                hook: name,
                notification_id: header("carrel-notification-id"),
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                signature_valid: verify(&secret, &header("carrel-signature"), &body),
            };
            inner.received.push(received);
            StatusCode::NO_CONTENT
        }
    }
}

impl Receiver {
    /// A receiver for `http://127.0.0.1:<port>/hook/<name>`, not listening yet.
    pub fn new(port: u16) -> Receiver {
        Receiver {
            port,
            inner: Arc::default(),
            running: None,
        }
    }

    pub fn url(&self, hook: &str) -> String {
        format!("http://127.0.0.1:{}/hook/{hook}", self.port)
    }

    /// The secret the hub gave for `hook`'s subscription.
    pub fn set_secret(&self, hook: &str, secret: &str) {
        lock(&self.inner)
            .secrets
            .insert(hook.to_owned(), secret.to_owned());
    }

    pub fn answer(&self, answer: Answer) {
        lock(&self.inner).answer = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner).received.clone()
    }

    pub fn refused(&self) -> usize {
        lock(&self.inner).refused
    }

    /// Starts listening (on the same port each time).
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the receiver is already up");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the webhook receiver's port");
        let app = axum::Router::new()
            .route("/hook/{name}", axum::routing::post(hook))
            .with_state(self.inner.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
                .expect("webhook receiver");
        });
        self.running = Some((stop, task));
    }

    /// Stops listening; open connections are closed.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.abort();
            let _ = task.await;
        }
    }
}
