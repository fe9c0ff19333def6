//! An S3-speaking test client: builds raw request-targets, signs, sends, collects.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::signing::{sign_request, Signing};

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    /// The text of `<element>` in an XML error body.
    pub fn xml(&self, element: &str) -> Option<String> {
        let text = self.text();
        let start = text.find(&format!("<{element}>"))? + element.len() + 2;
        let end = start + text[start..].find(&format!("</{element}>"))?;
        Some(text[start..end].to_owned())
    }
}

#[derive(Clone)]
pub struct TestClient {
    http1: Client<HttpConnector, Empty<Bytes>>,
    h2c: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self {
            http1: Client::builder(TokioExecutor::new()).build_http(),
            h2c: Client::builder(TokioExecutor::new()).http2_only(true).build_http(),
        }
    }
}

/// One request to build: where, what, how signed.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub target: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Headers added after signing, so the signature does not cover them.
    pub unsigned_headers: Vec<(String, String)>,
    pub signing: Signing,
    pub h2: bool,
}

impl Call {
    pub fn new(method: Method, target: &str, signing: &Signing) -> Self {
        Self {
            method,
            target: target.into(),
            host: None,
            headers: Vec::new(),
            unsigned_headers: Vec::new(),
            signing: signing.clone(),
            h2: false,
        }
    }

    pub fn get(target: &str, signing: &Signing) -> Self {
        Self::new(Method::GET, target, signing)
    }

    pub fn head(target: &str, signing: &Signing) -> Self {
        Self::new(Method::HEAD, target, signing)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn unsigned_header(mut self, name: &str, value: &str) -> Self {
        self.unsigned_headers.push((name.into(), value.into()));
        self
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn h2(mut self) -> Self {
        self.h2 = true;
        self
    }
}

impl TestClient {
    /// Sends `call` to the server at `address`, signed for the Host that server sees.
    pub async fn send(&self, address: SocketAddr, call: &Call) -> Result<Reply, String> {
        let (parts, body) = self.open(address, call).await?.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body failed: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends `call` and hashes the body as it arrives (a large body is never held
    /// whole): the status, the body's SHA-256 and its length.
    pub async fn digest(&self, address: SocketAddr, call: &Call) -> Result<(StatusCode, String, u64), String> {
        use sha2::Digest;
        let (parts, mut body) = self.open(address, call).await?.into_parts();
        let (mut hasher, mut length) = (sha2::Sha256::new(), 0u64);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body failed after {length} bytes: {e:?}"))?;
            if let Ok(data) = frame.into_data() {
                length += data.len() as u64;
                hasher.update(&data);
            }
        }
        Ok((parts.status, hex::encode(hasher.finalize()), length))
    }

    /// Sends `call` and returns the response as it arrives, its body unread.
    pub async fn open(
        &self,
        address: SocketAddr,
        call: &Call,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let host = call.host.clone().unwrap_or_else(|| address.to_string());
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("http://{host}{}", call.target));
        if !call.h2 {
            builder = builder.header("host", &host);
        }
        for (name, value) in &call.headers {
            builder = builder.header(name, value);
        }
        let mut request = builder.body(()).unwrap();
        if call.h2 {
            // Sign as an h2 client does: `:authority` stands for `host`.
            request.headers_mut().insert("host", host.parse().unwrap());
            sign_request(&mut request, &call.signing);
            request.headers_mut().remove("host");
        } else {
            sign_request(&mut request, &call.signing);
        }
        for (name, value) in &call.unsigned_headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        // Connect to `address` whatever the Host says (h2 calls take no Host override).
        let target = request.uri().path_and_query().unwrap().as_str().to_owned();
        let uri = format!("http://{address}{target}");
        let (mut parts, ()) = request.into_parts();
        parts.uri = uri.parse().unwrap();
        if call.h2 {
            parts.version = http::Version::HTTP_2;
        }
        let request = Request::from_parts(parts, Empty::new());
        let client = if call.h2 { &self.h2c } else { &self.http1 };
        client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e:?}"))
    }
}
