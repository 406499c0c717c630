//! Masking secrets in text that people see: the URLs in the ready line and in errors, and any
//! error text that reaches a result or a log line.
//!
//! Two masks, one file, so every place that shows text from outside uses the same rules:
//! - [`url`] for a URL the worker holds (`DATABASE_URL`, `AMQP_URL`): the userinfo password and
//!   every credential-like query parameter (`password`, `sslpassword`, `token`, …) become `***`;
//! - [`text`] for free text (an error message, a response body quoted in one): credentials in any
//!   URL inside it, credential-like `name=value` query parameters, and anything shaped like an
//!   OpenAI key (`sk-…`, `sk-proj-…`) are masked.
//!
//! Masking is for display only; it is deliberately eager (a parameter named `apikey` that is not a
//! secret is masked anyway).

use std::borrow::Cow;

/// What a masked secret reads as.
pub(crate) const MASK: &str = "***";

/// A URL fit for logs and errors: scheme, host, port, path and harmless query parameters, never
/// the password, whether it sits in the userinfo or in a query parameter. Text that is not a URL
/// is not shown at all (it could be a password pasted in the wrong place).
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(text) else {
        return "<unparseable url>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if let Some(query) = parsed.query() {
        let masked = mask_query(query);
        if masked != query {
            parsed.set_query(Some(&masked));
        }
    }
    parsed.to_string()
}

/// `text` with every secret this module recognizes masked (see the module comment). Borrowed when
/// there was nothing to mask, which is the common case.
pub(crate) fn text(text: &str) -> Cow<'_, str> {
    let step = mask_userinfo(text);
    let step = match mask_params(&step) {
        Cow::Borrowed(_) => step,
        Cow::Owned(owned) => Cow::Owned(owned),
    };
    match mask_openai_keys(&step) {
        Cow::Borrowed(_) => step,
        Cow::Owned(owned) => Cow::Owned(owned),
    }
}

/// Whether a query parameter (or `name=value` pair in text) of this name carries a secret.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const PARTS: [&str; 6] = ["password", "passwd", "secret", "token", "apikey", "api_key"];
    const EXACT: [&str; 6] = ["pass", "pwd", "key", "auth", "signature", "x-amz-signature"];
    PARTS.iter().any(|part| name.contains(part)) || EXACT.contains(&name.as_str())
}

/// A URL's query with the values of secret parameters masked; everything else byte for byte.
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_name(&decode(name)) => {
                format!("{name}={MASK}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decode(name: &str) -> String {
    url::form_urlencoded::parse(format!("{name}=").as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

/// Where a value inside free text ends: at whitespace, a quote, a bracket or a separator.
fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | ',' | ';'
        )
}

/// `scheme://user:password@host` → `scheme://user:***@host`, for every URL in `text`.
fn mask_userinfo(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| ends_value(c) || matches!(c, '/' | '?' | '#'))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let userinfo = &authority[..at];
                let user = &userinfo[..userinfo.find(':').unwrap_or(userinfo.len())];
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `?password=x` / `&sslpassword=x` (and every other secret name) → `?password=***`.
fn mask_params(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if matches!(bytes[i], b'?' | b'&') {
            let name_start = i + 1;
            let name_len = text[name_start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%')))
                .unwrap_or(text.len() - name_start);
            let name_end = name_start + name_len;
            if name_len > 0
                && bytes.get(name_end) == Some(&b'=')
                && is_secret_name(&decode(&text[name_start..name_end]))
            {
                let value_start = name_end + 1;
                let value_end = text[value_start..]
                    .find(|c: char| ends_value(c) || matches!(c, '&' | '#'))
                    .map_or(text.len(), |n| value_start + n);
                if value_end > value_start {
                    out.push_str(&text[copied..value_start]);
                    out.push_str(MASK);
                    copied = value_end;
                }
                i = value_end;
                continue;
            }
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Anything shaped like an OpenAI key — `sk-` at the start of a word, then at least four key
/// characters (`sk-proj-…`, `sk-svcacct-…`, and a key quoted with its middle starred out
/// included) — becomes `sk-***`.
fn mask_openai_keys(text: &str) -> Cow<'_, str> {
    const MIN_TAIL: usize = 4;
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*');
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("sk-") {
        let start = search + found;
        let at_word_start = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let tail_start = start + 3;
        let tail_len = text[tail_start..]
            .find(|c: char| !is_key_char(c))
            .unwrap_or(text.len() - tail_start);
        if at_word_start && tail_len >= MIN_TAIL {
            out.push_str(&text[copied..start]);
            out.push_str("sk-");
            out.push_str(MASK);
            copied = tail_start + tail_len;
            search = copied;
        } else {
            search = tail_start;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_wherever_they_sit() {
        assert_eq!(
            url("postgres://memoji:hunter2@db.internal:5432/memoji"),
            "postgres://memoji:***@db.internal:5432/memoji"
        );
        assert_eq!(
            url("postgres://memoji@db:5432/memoji?password=hunter2&sslmode=require"),
            "postgres://memoji@db:5432/memoji?password=***&sslmode=require"
        );
        assert_eq!(
            url("postgres://db/memoji?sslmode=verify-full&sslpassword=k3y-pass&application_name=w"),
            "postgres://db/memoji?sslmode=verify-full&sslpassword=***&application_name=w"
        );
        // Names in any case, and percent-encoded names.
        assert_eq!(
            url("postgres://db/m?PASSWORD=hunter2&pass%77ord=hunter3"),
            "postgres://db/m?PASSWORD=***&pass%77ord=***"
        );
        assert_eq!(
            url("amqps://worker:s3cr3t@broker:5671/%2f?heartbeat=10&auth_token=abc"),
            "amqps://worker:***@broker:5671/%2f?heartbeat=10&auth_token=***"
        );
        // Nothing to hide: unchanged.
        assert_eq!(
            url("amqp://guest@127.0.0.1:5672/%2f?heartbeat=10"),
            "amqp://guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(url("hunter2"), "<unparseable url>");
    }

    #[test]
    fn error_text_loses_openai_keys() {
        let cases = [
            (
                "401: Incorrect API key provided: sk-proj-AbC123xyz_-456DEF. You can find your key",
                "401: Incorrect API key provided: sk-***. You can find your key",
            ),
            (
                "key sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH rejected",
                "key sk-*** rejected",
            ),
            (
                r#"{"error":{"message":"Incorrect API key provided: sk-svcacct-****************************wxyz"}}"#,
                r#"{"error":{"message":"Incorrect API key provided: sk-***"}}"#,
            ),
            ("sk-live-123", "sk-***"),
            (
                "two: sk-aaaa1111 and (sk-bbbb2222)",
                "two: sk-*** and (sk-***)",
            ),
        ];
        for (raw, masked) in cases {
            assert_eq!(text(raw), masked, "{raw}");
            assert!(!text(raw).contains("456DEF") && !text(raw).contains("wxyz"));
        }
        // Words that merely contain the letters stay.
        for harmless in [
            "a risk-free retry",
            "desk-top",
            "sk-",
            "sk-ab",
            "task-42 failed",
        ] {
            assert!(matches!(text(harmless), Cow::Borrowed(_)), "{harmless}");
        }
    }

    #[test]
    fn error_text_loses_credentials_in_urls() {
        assert_eq!(
            text("connecting to postgres://memoji:hunter2@db:5432/memoji: connection refused"),
            "connecting to postgres://memoji:***@db:5432/memoji: connection refused"
        );
        assert_eq!(
            text("error with postgres://db/memoji?sslmode=require&password=hunter2 (timeout)"),
            "error with postgres://db/memoji?sslmode=require&password=*** (timeout)"
        );
        assert_eq!(
            text(r#"url "amqp://u:p%40ss@h/%2f?sslpassword=x&heartbeat=5""#),
            r#"url "amqp://u:***@h/%2f?sslpassword=***&heartbeat=5""#
        );
        let plain = "OpenAI answered 500: upstream connect error";
        assert!(matches!(text(plain), Cow::Borrowed(_)));
    }
}
