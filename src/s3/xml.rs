//! S3 error bodies: `<Error><Code/><Message/>...<RequestId/></Error>`.

use std::fmt::Write;

/// Escapes text for an XML element body or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Renders an S3 error document. `extra` holds code-specific elements such as
/// `<Method>` for MethodNotAllowed, in order.
pub fn error_body(code: &str, message: &str, resource: &str, request_id: &str, extra: &[(&str, String)]) -> String {
    let mut body = String::with_capacity(256);
    body.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>");
    let _ = write!(
        body,
        "<Code>{}</Code><Message>{}</Message>",
        escape(code),
        escape(message)
    );
    for (name, value) in extra {
        let _ = write!(body, "<{name}>{}</{name}>", escape(value));
    }
    let _ = write!(
        body,
        "<Resource>{}</Resource><RequestId>{}</RequestId></Error>",
        escape(resource),
        escape(request_id)
    );
    body
}

/// The `<Code>` of an S3 error document.
pub fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(body[start..start + len].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_is_read_back() {
        let body = error_body("ExpiredToken", "gone", "/b/k", "ID", &[]);
        assert_eq!(error_code(&body), Some("ExpiredToken"));
        assert_eq!(error_code("<Error><Message>m</Message></Error>"), None);
        assert_eq!(error_code("<Code>Unclosed"), None);
    }

    #[test]
    fn error_document_is_escaped_and_ordered() {
        let body = error_body(
            "MethodNotAllowed",
            "a < b & c",
            "/b/k\"",
            "ABC",
            &[("Method", "PUT".into())],
        );
        assert!(body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(body.contains("<Message>a &lt; b &amp; c</Message><Method>PUT</Method>"));
        assert!(body.contains("<Resource>/b/k&quot;</Resource><RequestId>ABC</RequestId></Error>"));
    }

    #[test]
    fn control_characters_become_references() {
        assert_eq!(escape("a\u{1}b"), "a&#x1;b");
    }
}
