//! A SigV4 presigned URL's own window and scope, read from its query: when it was
//! signed, for how long, and for which date, region and service. Checked locally
//! (with `presigned` grants on) so that an expired or malformed URL is refused
//! before any cache lookup, with the error S3 gives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::signature::{SigV4Params, Signature, MAX_EXPIRES, SIGV4_ALGORITHM};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    /// `X-Amz-Date`.
    pub signed_at: SystemTime,
    /// `X-Amz-Date` + `X-Amz-Expires`: the URL's own end.
    pub expires: SystemTime,
}

/// Why a presigned URL is refused locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresignError {
    /// 403 AccessDenied, as S3 answers an expired URL.
    #[error("Request has expired")]
    Expired,
    /// 400 AuthorizationQueryParametersError.
    #[error("{0}")]
    Malformed(&'static str),
}

/// The presigned URL's window, if the query is a SigV4 presign (`None` for any
/// other request), checked at `now`.
pub fn check(presign: &[(String, String)], now: SystemTime) -> Option<Result<Presigned, PresignError>> {
    let params = Signature::of_query(presign).presigned()?;
    Some(window(&params, now))
}

fn window(params: &SigV4Params<'_>, now: SystemTime) -> Result<Presigned, PresignError> {
    let malformed = PresignError::Malformed;
    let presign = params.presigned.expect("a presigned query");
    if presign.algorithm != Some(SIGV4_ALGORITHM) {
        return Err(malformed("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""));
    }
    let date = params.amz_date.ok_or(malformed("X-Amz-Date must be given"))?;
    let signed_at = parse_amz_date(date).ok_or(malformed(
        "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
    ))?;
    let expires: u64 = presign
        .expires
        .and_then(|v| v.parse().ok())
        .ok_or(malformed("X-Amz-Expires should be a number"))?;
    if expires == 0 || expires > MAX_EXPIRES {
        return Err(malformed(
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        ));
    }
    // <key id>/<yyyymmdd>/<region>/s3/aws4_request, the date that of X-Amz-Date.
    let credential = params.credential.ok_or(malformed("X-Amz-Credential must be given"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    match scope.as_slice() {
        [key, day, region, "s3", "aws4_request"] if !key.is_empty() && !region.is_empty() && *day == &date[..8] => {}
        _ => return Err(malformed("Error parsing the X-Amz-Credential parameter")),
    }
    if params.signed_headers.is_none_or(str::is_empty) {
        return Err(malformed("X-Amz-SignedHeaders must be given"));
    }
    let end = signed_at + Duration::from_secs(expires);
    if now >= end {
        return Err(PresignError::Expired);
    }
    Ok(Presigned {
        signed_at,
        expires: end,
    })
}

/// `yyyymmddThhmmssZ` as a time.
pub(crate) fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let seconds = days as u64 * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(date: &str, expires: &str, credential: &str) -> Vec<(String, String)> {
        [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", credential),
            ("X-Amz-Date", date),
            ("X-Amz-Expires", expires),
            ("X-Amz-SignedHeaders", "host"),
            ("X-Amz-Signature", "ab"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn amz_dates_read_as_utc() {
        let at = parse_amz_date("20261124T030000Z").unwrap();
        assert_eq!(at.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_795_489_200);
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(UNIX_EPOCH));
        for bad in [
            "20261124T030000",
            "2026-11-24T03:00:00Z",
            "20261324T030000Z",
            "2026112xT030000Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_url_is_good_inside_its_window_and_refused_outside() {
        let signed = parse_amz_date("20261124T030000Z").unwrap();
        let good = query("20261124T030000Z", "600", "AKIA/20261124/default/s3/aws4_request");
        let window = check(&good, signed + Duration::from_secs(599)).unwrap().unwrap();
        assert_eq!(window.expires, signed + Duration::from_secs(600));
        assert_eq!(
            check(&good, signed + Duration::from_secs(600)),
            Some(Err(PresignError::Expired))
        );
        assert_eq!(check(&[], signed), None, "not a presigned request");
    }

    #[test]
    fn malformed_windows_and_scopes_are_refused() {
        let at = parse_amz_date("20261124T030000Z").unwrap();
        for (date, expires, credential) in [
            ("20261124T030000Z", "0", "AKIA/20261124/default/s3/aws4_request"),
            ("20261124T030000Z", "604801", "AKIA/20261124/default/s3/aws4_request"),
            ("20261124T030000Z", "ten", "AKIA/20261124/default/s3/aws4_request"),
            ("20261124", "600", "AKIA/20261124/default/s3/aws4_request"),
            ("20261124T030000Z", "600", "AKIA/20261123/default/s3/aws4_request"),
            ("20261124T030000Z", "600", "AKIA/20261124/default/sts/aws4_request"),
            ("20261124T030000Z", "600", "AKIA/20261124/default/s3"),
            ("20261124T030000Z", "600", "/20261124/default/s3/aws4_request"),
        ] {
            let result = check(&query(date, expires, credential), at);
            assert!(
                matches!(result, Some(Err(PresignError::Malformed(_)))),
                "{date} {expires} {credential}: {result:?}"
            );
        }
    }
}
