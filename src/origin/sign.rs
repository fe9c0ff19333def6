//! SigV4 signing of the proxy's own requests (chunk fills), with `aws-sigv4`.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http::Request;

use crate::s3::keys::ProxyCredentials;

#[derive(Debug, thiserror::Error)]
#[error("signing a request with the proxy's credentials")]
pub struct SignError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Signs `request` in place as S3 expects: the raw path as is (no normalization, no
/// second encoding), `UNSIGNED-PAYLOAD`, every header present signed.
pub fn sign_s3<B>(request: &mut Request<B>, credentials: &ProxyCredentials, region: &str) -> Result<(), SignError> {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "s3-accel",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.into()))?
        .into();
    let uri = request.uri().to_string();
    let headers = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let signable = SignableRequest::new(request.method().as_str(), &uri, headers, SignableBody::UnsignedPayload)
        .map_err(|e| SignError(e.into()))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| SignError(e.into()))?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}
