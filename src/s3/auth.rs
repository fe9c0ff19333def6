//! What a client's signature covers: the proxy may reuse a client's request for a
//! chunk fill only when the signature does not cover the headers a fill changes.

use http::HeaderMap;

use super::signature::Signature;

/// How a request is authenticated, as far as the proxy needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    Anonymous,
    /// SigV4, in the Authorization header or in a presigned query.
    V4 {
        signed_headers: Vec<String>,
        region: Option<String>,
    },
    /// SigV2 (header or presigned): its string-to-sign never includes Range or If-Match.
    V2,
}

impl ClientAuth {
    /// From the Authorization header, else the presign parameters `classify` found.
    pub fn of(headers: &HeaderMap, presign: &[(String, String)]) -> Self {
        Self::from(Signature::of(headers, presign))
    }
}

impl From<Signature<'_>> for ClientAuth {
    fn from(signature: Signature<'_>) -> Self {
        match signature {
            Signature::Anonymous => Self::Anonymous,
            Signature::V2 => Self::V2,
            Signature::V4(params) => Self::v4(params.signed_headers, params.credential),
        }
    }
}

impl ClientAuth {
    fn v4(signed_headers: Option<&str>, credential: Option<&str>) -> Self {
        let signed_headers = signed_headers
            .unwrap_or_default()
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        // Credential=AKID/20261123/<region>/s3/aws4_request
        let region = credential
            .and_then(|c| c.split('/').nth(2).map(str::to_owned))
            .filter(|r| !r.is_empty());
        Self::V4 { signed_headers, region }
    }

    /// Whether changing or adding `name` would break the signature.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Self::Anonymous | Self::V2 => false,
            Self::V4 { signed_headers, .. } => signed_headers.iter().any(|h| h == name),
        }
    }

    /// The region of the client's credential scope.
    pub fn region(&self) -> Option<&str> {
        match self {
            Self::V4 { region, .. } => region.as_deref(),
            Self::Anonymous | Self::V2 => None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn boto3_header_signature_covers_range() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKID/20261123/default/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=ab"
                .parse()
                .unwrap(),
        );
        let auth = ClientAuth::of(&headers, &[]);
        assert!(auth.covers("range") && auth.covers("host") && !auth.covers("if-match"));
        assert_eq!(auth.region(), Some("default"));
    }

    #[test]
    fn presigned_urls_sign_only_host() {
        let presign = |query: &str| {
            crate::s3::classify(&http::Method::GET, "/b/k", Some(query), None)
                .unwrap()
                .presign
        };
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261123%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=ff";
        let auth = ClientAuth::of(&HeaderMap::new(), &presign(query));
        assert!(auth.covers("host") && !auth.covers("range"));
        assert_eq!(auth.region(), Some("us-east-1"));
        assert_eq!(
            ClientAuth::of(&HeaderMap::new(), &presign("AWSAccessKeyId=a&Signature=s&Expires=1")),
            ClientAuth::V2
        );
        assert!(ClientAuth::of(&HeaderMap::new(), &presign("versionId=1")).is_anonymous());
    }
}
