//! What a request says of its signature, read once: SigV4 in the Authorization
//! header or in a presigned query, SigV2, or none. Nothing here is checked; the
//! readers of these parameters (what a fill may change, a presigned URL's window,
//! the local SigV4 check, a presigned grant's key) take them from here.

use http::{header, HeaderMap};

/// The algorithm name SigV4 requests carry.
pub const SIGV4_ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The longest a SigV4 presigned URL may live (seven days), in seconds.
pub const MAX_EXPIRES: u64 = 604_800;

/// How a request says it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature<'a> {
    Anonymous,
    /// SigV2, in the Authorization header or a presigned query.
    V2,
    V4(SigV4Params<'a>),
}

/// A SigV4 signature's parameters, as the request states them (any may be missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigV4Params<'a> {
    /// `Credential`: `<key id>/<yyyymmdd>/<region>/<service>/aws4_request`.
    pub credential: Option<&'a str>,
    /// `SignedHeaders`: lower-case names joined by `;`.
    pub signed_headers: Option<&'a str>,
    pub signature: Option<&'a str>,
    /// `x-amz-date` header, or `X-Amz-Date` of a presigned query.
    pub amz_date: Option<&'a str>,
    /// `x-amz-content-sha256` header, or `X-Amz-Content-Sha256` of a presigned query.
    pub payload_hash: Option<&'a str>,
    /// The session token signed with (temporary keys): `x-amz-security-token`, else
    /// `X-Amz-Security-Token` of the query.
    pub security_token: Option<&'a str>,
    /// Set for a presigned query, `None` for the Authorization header.
    pub presigned: Option<Presign<'a>>,
}

/// The parameters only a presigned query has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presign<'a> {
    /// `X-Amz-Algorithm`.
    pub algorithm: Option<&'a str>,
    /// `X-Amz-Expires`, unparsed.
    pub expires: Option<&'a str>,
}

impl<'a> Signature<'a> {
    /// From the Authorization header, else the query's (decoded) parameters.
    pub fn of(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let token = header("x-amz-security-token").or_else(|| param(query, "X-Amz-Security-Token"));
        if let Some(value) = header(header::AUTHORIZATION.as_str()) {
            let Some(rest) = value.strip_prefix(SIGV4_ALGORITHM) else {
                return Self::V2;
            };
            let field = |name: &str| {
                rest.split(',')
                    .map(str::trim)
                    .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            };
            return Self::V4(SigV4Params {
                credential: field("Credential"),
                signed_headers: field("SignedHeaders"),
                signature: field("Signature"),
                amz_date: header("x-amz-date"),
                payload_hash: header("x-amz-content-sha256"),
                security_token: token,
                presigned: None,
            });
        }
        match Self::of_query(query) {
            Self::V4(params) => Self::V4(SigV4Params {
                security_token: token,
                ..params
            }),
            other => other,
        }
    }

    /// From the query's (decoded) parameters alone: a presigned URL's.
    pub fn of_query(query: &'a [(String, String)]) -> Self {
        let param = |name: &str| param(query, name);
        if let Some(signature) = param("X-Amz-Signature") {
            return Self::V4(SigV4Params {
                credential: param("X-Amz-Credential"),
                signed_headers: param("X-Amz-SignedHeaders"),
                signature: Some(signature),
                amz_date: param("X-Amz-Date"),
                payload_hash: param("X-Amz-Content-Sha256"),
                security_token: param("X-Amz-Security-Token"),
                presigned: Some(Presign {
                    algorithm: param("X-Amz-Algorithm"),
                    expires: param("X-Amz-Expires"),
                }),
            });
        }
        match param("Signature") {
            Some(_) => Self::V2,
            None => Self::Anonymous,
        }
    }

    /// The SigV4 parameters of a presigned query, if this is one.
    pub fn presigned(self) -> Option<SigV4Params<'a>> {
        match self {
            Self::V4(params) if params.presigned.is_some() => Some(params),
            _ => None,
        }
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_header_wins_over_the_query_and_each_form_is_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKID/20261123/default/s3/aws4_request, SignedHeaders=host;range, Signature=ab"
                .parse()
                .unwrap(),
        );
        headers.insert("x-amz-date", "20261123T000000Z".parse().unwrap());
        let query = pairs("X-Amz-Signature=ff&X-Amz-Credential=other");
        let Signature::V4(params) = Signature::of(&headers, &query) else {
            panic!("SigV4 in the header")
        };
        assert_eq!(params.credential, Some("AKID/20261123/default/s3/aws4_request"));
        assert_eq!(params.signed_headers, Some("host;range"));
        assert_eq!(params.signature, Some("ab"));
        assert_eq!(params.amz_date, Some("20261123T000000Z"));
        assert_eq!(params.presigned, None);

        let query =
            pairs("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=60&X-Amz-Signature=ff&X-Amz-SignedHeaders=host");
        let params = Signature::of_query(&query).presigned().unwrap();
        assert_eq!(params.signature, Some("ff"));
        assert_eq!(params.signed_headers, Some("host"));
        assert_eq!(params.presigned.unwrap().expires, Some("60"));

        let mut v2 = HeaderMap::new();
        v2.insert(header::AUTHORIZATION, "AWS AKID:sig".parse().unwrap());
        assert_eq!(Signature::of(&v2, &[]), Signature::V2);
        assert_eq!(
            Signature::of(&HeaderMap::new(), &pairs("Signature=s&Expires=1")),
            Signature::V2
        );
        assert_eq!(
            Signature::of(&HeaderMap::new(), &pairs("versionId=1")),
            Signature::Anonymous
        );
    }
}
