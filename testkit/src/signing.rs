//! Signing requests the way S3 clients do, with the `aws-sigv4` crate.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;

#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl Credentials {
    pub fn new(access_key: &str, secret_key: &str) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        }
    }
}

/// How a request is authenticated.
#[derive(Clone, Debug)]
pub enum Signing {
    /// No signature at all.
    Anonymous,
    /// SigV4 in the Authorization header, every header signed (Range included), as boto3 signs.
    Header(Credentials),
    /// A SigV4 presigned URL (`SignedHeaders=host`), as `generate_presigned_url` makes.
    Presigned(Credentials),
}

/// Signs `request` (whose URI is absolute and whose Host header is what the server
/// will see) in place.
pub fn sign_request(request: &mut http::Request<()>, signing: &Signing) {
    let (credentials, location) = match signing {
        Signing::Anonymous => return,
        Signing::Header(c) => (c, SignatureLocation::Headers),
        Signing::Presigned(c) => (c, SignatureLocation::QueryParams),
    };
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.signature_location = location;
    if matches!(signing, Signing::Presigned(_)) {
        settings.expires_in = Some(Duration::from_secs(300));
    } else {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let identity =
        aws_credential_types::Credentials::new(&credentials.access_key, &credentials.secret_key, None, None, "test")
            .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("default")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    // Presigned URLs sign only `host`; header signing signs what the request carries.
    let presigned = matches!(signing, Signing::Presigned(_));
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter(|(name, _)| !presigned || name.as_str() == "host")
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(request);
}
