//! A log line for every refused request: the RPC, the gRPC code and the message, so
//! an operator can see bad input and denied access without reading client output.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Tower layer that logs responses whose `grpc-status` is not OK.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogRefusalsLayer;

impl<S> tower::Layer<S> for LogRefusalsLayer {
    type Service = LogRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LogRefusals { inner }
    }
}

#[derive(Debug, Clone)]
pub struct LogRefusals<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for LogRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let headers = response.headers();
            if let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
                if code != "0" {
                    let message = headers
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .map(percent_decode)
                        .unwrap_or_default();
                    let code = tonic::Code::from_bytes(code.as_bytes());
                    tracing::info!(%rpc, ?code, reason = %message, "request refused");
                }
            }
            Ok(response)
        })
    }
}

/// Decodes the percent-encoding gRPC uses for `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_restores_the_message() {
        assert_eq!(
            super::percent_decode("site%20%22x%22 is 100%25"),
            "site \"x\" is 100%"
        );
        assert_eq!(super::percent_decode("trailing %2"), "trailing %2");
    }
}
