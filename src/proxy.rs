//! The request path, top to bottom: route, classify, forward, relay.

mod forward;

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response};
use http_body::Body;

use crate::error::{error_chain, ProxyError};
use crate::origin::Router;
use crate::s3;
use crate::ProxyBody;

/// The proxy: everything a request needs, shared by all connections.
pub struct Proxy {
    router: Router,
}

impl Proxy {
    pub fn new(router: Router) -> Arc<Self> {
        Arc::new(Self { router })
    }

    /// Answers one client request. Never fails: errors become S3 error responses.
    pub async fn handle<B: Body>(&self, request: Request<B>) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = s3::new_request_id();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = match self.forward(request, &request_id).await {
            Ok(response) => response,
            Err(error) => {
                let (status, _) = error.status_and_code();
                if status.is_server_error() {
                    tracing::warn!(request_id, error = error_chain(&error), "origin failure");
                }
                error.into_response(&request_id, &path, &method)
            }
        };
        let id = response
            .headers()
            .get(s3::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&request_id);
        tracing::info!(
            target: "access",
            method = %method,
            path,
            status = response.status().as_u16(),
            request_id = id,
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
        );
        response
    }

    async fn forward<B: Body>(&self, request: Request<B>, request_id: &str) -> Result<Response<ProxyBody>, ProxyError> {
        // Route first: the Host decides whether the bucket is in the name or the path.
        let authority = forward::client_authority(&request).unwrap_or_default();
        let route = self.router.route(&authority)?;

        // Classify before anything reaches the origin: only object reads go on.
        let uri = request.uri();
        s3::classify(
            request.method(),
            uri.path(),
            uri.query(),
            route.bucket_from_host.as_deref(),
        )?;
        if carries_body(&request) {
            return Err(ProxyError::UnexpectedBody(request.method().clone()));
        }

        // The client's own signed request, unchanged: the origin authorizes it.
        let origin_request = forward::origin_request(&request, &route.region.client.origin().clone(), &authority)?;
        let response = route.region.client.send(origin_request).await?;
        Ok(forward::client_response(response, request_id))
    }
}

/// A GET or HEAD with a body is not something S3 clients send; refusing it keeps
/// the forwarded request free of a body we would have to drop.
fn carries_body<B: Body>(request: &Request<B>) -> bool {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    (declared || chunked) && matches!(*request.method(), Method::GET | Method::HEAD)
}
