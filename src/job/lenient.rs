//! A bounded, lenient reading of a message that is not a job, for the one purpose of answering it:
//! its top-level `job_id` and `user_id` strings, as JavaScript's `JSON.parse` would read them.
//!
//! It accepts what `JSON.parse` accepts and `serde_json` refuses: a lone UTF-16 surrogate escape
//! (`"\ud800"`, which a browser's `slice` of an emoji makes) becomes U+FFFD, invalid UTF-8 inside
//! a string too, and nesting is not limited. It reads at most the bytes it is given, one pass, no
//! recursion (the nesting is a stack of flags), and copies only the two strings it looks for; a
//! prefix of a longer body (the first 64 KiB of an oversized message) is read as far as it goes.

/// What the scan found at the top level of the object (the last one, as `JSON.parse` keeps it,
/// when a key repeats).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Ids {
    pub(crate) job_id: Option<String>,
    pub(crate) user_id: Option<String>,
}

/// Why the scan stopped before the text was read.
enum Stop {
    /// Not JSON as `JSON.parse` reads it.
    Syntax,
    /// The text ended.
    End,
}

/// Reads `text` as a JSON object. `prefix`: the text is the start of a longer body, so ending
/// anywhere is fine; otherwise it must be exactly one object. `None` when it is not JSON (or not
/// an object).
pub(super) fn scan(text: &[u8], prefix: bool) -> Option<Ids> {
    let mut scanner = Scanner { text, at: 0 };
    let mut ids = Ids::default();
    match scanner.object(&mut ids) {
        Ok(()) => {}
        Err(Stop::End) if prefix => return Some(ids),
        Err(_) => return None,
    }
    scanner.whitespace();
    (scanner.at == text.len()).then_some(ids)
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

/// Where the scan is inside a container.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

impl Scanner<'_> {
    fn peek(&self) -> Result<u8, Stop> {
        self.text.get(self.at).copied().ok_or(Stop::End)
    }

    fn next(&mut self) -> Result<u8, Stop> {
        let byte = self.peek()?;
        self.at += 1;
        Ok(byte)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Stop> {
        if self.next()? == byte {
            Ok(())
        } else {
            Err(Stop::Syntax)
        }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// The top-level object, capturing its `job_id` and `user_id` string values.
    fn object(&mut self, ids: &mut Ids) -> Result<(), Stop> {
        self.whitespace();
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.whitespace();
            let key = self.string(true)?.unwrap_or_default();
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let slot = match key.as_str() {
                "job_id" => Some(&mut ids.job_id),
                "user_id" => Some(&mut ids.user_id),
                _ => None,
            };
            match slot {
                Some(slot) if self.peek()? == b'"' => *slot = self.string(true)?,
                Some(slot) => {
                    *slot = None;
                    self.value()?;
                }
                None => self.value()?,
            }
            self.whitespace();
            match self.next()? {
                b',' => {}
                b'}' => return Ok(()),
                _ => return Err(Stop::Syntax),
            }
        }
    }

    /// Any value, skipped; nested containers are tracked on a stack, not by recursion.
    fn value(&mut self) -> Result<(), Stop> {
        let mut open: Vec<Container> = Vec::new();
        loop {
            // A value.
            self.whitespace();
            match self.peek()? {
                b'{' | b'[' => {
                    let container = if self.next()? == b'{' {
                        Container::Object
                    } else {
                        Container::Array
                    };
                    self.whitespace();
                    let close = match container {
                        Container::Object => b'}',
                        Container::Array => b']',
                    };
                    if self.peek()? == close {
                        self.at += 1;
                    } else {
                        open.push(container);
                        if container == Container::Object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string(false)?;
                }
                b't' => self.word(b"true")?,
                b'f' => self.word(b"false")?,
                b'n' => self.word(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(Stop::Syntax),
            }
            // After a value: close containers or go on to the next element.
            loop {
                let Some(&container) = open.last() else {
                    return Ok(());
                };
                self.whitespace();
                match (self.next()?, container) {
                    (b',', Container::Object) => {
                        self.member_key()?;
                        break;
                    }
                    (b',', Container::Array) => break,
                    (b'}', Container::Object) | (b']', Container::Array) => {
                        open.pop();
                    }
                    _ => return Err(Stop::Syntax),
                }
            }
        }
    }

    /// `"key" :` inside a nested object.
    fn member_key(&mut self) -> Result<(), Stop> {
        self.whitespace();
        self.string(false)?;
        self.whitespace();
        self.expect(b':')
    }

    fn word(&mut self, word: &[u8]) -> Result<(), Stop> {
        for &byte in word {
            self.expect(byte)?;
        }
        Ok(())
    }

    fn digits(&mut self) -> Result<usize, Stop> {
        let start = self.at;
        while self.peek().is_ok_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        Ok(self.at - start)
    }

    fn number(&mut self) -> Result<(), Stop> {
        if self.peek()? == b'-' {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits()?;
            }
            _ => return Err(Stop::Syntax),
        }
        // The text may end right after a number only inside a prefix; `peek` says so.
        if self.peek()? == b'.' {
            self.at += 1;
            if self.digits()? == 0 {
                return Err(self.peek().err().unwrap_or(Stop::Syntax));
            }
        }
        if let b'e' | b'E' = self.peek()? {
            self.at += 1;
            if let b'+' | b'-' = self.peek()? {
                self.at += 1;
            }
            if self.digits()? == 0 {
                return Err(self.peek().err().unwrap_or(Stop::Syntax));
            }
        }
        Ok(())
    }

    /// A string; its text (escapes decoded, lone surrogates and invalid UTF-8 as U+FFFD) when
    /// `keep`.
    fn string(&mut self, keep: bool) -> Result<Option<String>, Stop> {
        self.expect(b'"')?;
        let mut bytes = Vec::new();
        let mut pending_high: Option<u16> = None;
        loop {
            let byte = self.next()?;
            let unit = match byte {
                b'"' => break,
                0x00..=0x1f => return Err(Stop::Syntax),
                b'\\' => match self.next()? {
                    b'u' => Some(self.hex4()?),
                    escaped => {
                        let plain = match escaped {
                            b'"' => b'"',
                            b'\\' => b'\\',
                            b'/' => b'/',
                            b'b' => 0x08,
                            b'f' => 0x0c,
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            _ => return Err(Stop::Syntax),
                        };
                        flush_high(&mut pending_high, &mut bytes, keep);
                        if keep {
                            bytes.push(plain);
                        }
                        None
                    }
                },
                other => {
                    flush_high(&mut pending_high, &mut bytes, keep);
                    if keep {
                        bytes.push(other);
                    }
                    None
                }
            };
            if let Some(unit) = unit {
                match (pending_high.take(), unit) {
                    (Some(high), 0xdc00..=0xdfff) => {
                        let code = 0x10000
                            + ((u32::from(high) - 0xd800) << 10)
                            + (u32::from(unit) - 0xdc00);
                        push_char(&mut bytes, char::from_u32(code), keep);
                    }
                    (high, 0xd800..=0xdbff) => {
                        if high.is_some() {
                            push_char(&mut bytes, None, keep);
                        }
                        pending_high = Some(unit);
                    }
                    (high, unit) => {
                        if high.is_some() {
                            push_char(&mut bytes, None, keep);
                        }
                        push_char(&mut bytes, char::from_u32(u32::from(unit)), keep);
                    }
                }
            }
        }
        flush_high(&mut pending_high, &mut bytes, keep);
        Ok(keep.then(|| String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn hex4(&mut self) -> Result<u16, Stop> {
        let mut unit = 0_u16;
        for _ in 0..4 {
            let digit = char::from(self.next()?).to_digit(16).ok_or(Stop::Syntax)?;
            unit = unit * 16 + digit as u16;
        }
        Ok(unit)
    }
}

/// A high surrogate not followed by a low one stands alone: U+FFFD.
fn flush_high(pending_high: &mut Option<u16>, bytes: &mut Vec<u8>, keep: bool) {
    if pending_high.take().is_some() {
        push_char(bytes, None, keep);
    }
}

/// Appends a character, or U+FFFD for `None` (a lone surrogate).
fn push_char(bytes: &mut Vec<u8>, c: Option<char>, keep: bool) {
    if keep {
        let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
        bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(job_id: Option<&str>, user_id: Option<&str>) -> Option<Ids> {
        Some(Ids {
            job_id: job_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
        })
    }

    #[test]
    fn reads_the_ids_of_what_json_parse_accepts() {
        let text = br#"{"config":{"a":[1,-2.5e3,{"user_id":"nested"}],"b":null},"job_id":"j","user_id":"u\ud83d\ude00","x":true}"#;
        assert_eq!(scan(text, false), ids(Some("j"), Some("u\u{1f600}")));
        // A lone surrogate, high or low, becomes U+FFFD; the rest of the string is kept.
        let text = br#"{"user_id":"ab\ud83d","job_id":"\udc00x\ud83dy"}"#;
        assert_eq!(
            scan(text, false),
            ids(Some("\u{fffd}x\u{fffd}y"), Some("ab\u{fffd}"))
        );
        // The last of a repeated key wins; a non-string value means none.
        assert_eq!(
            scan(br#"{"user_id":"a","user_id":"b"}"#, false),
            ids(None, Some("b"))
        );
        assert_eq!(
            scan(br#"{"user_id":"a","user_id":7}"#, false),
            ids(None, None)
        );
        // Nesting deeper than serde_json allows is no problem.
        let deep = format!(
            r#"{{"user_id":"u","c":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(scan(deep.as_bytes(), false), ids(None, Some("u")));
    }

    #[test]
    fn refuses_what_json_parse_refuses() {
        for text in [
            &b"hello"[..],
            b"[1,2]",
            b"{\"user_id\":\"u\"",
            b"{\"user_id\":\"u\"} x",
            b"{\"user_id\":'u'}",
            b"{\"user_id\":\"a\nb\"}",
            b"{\"a\":01,\"user_id\":\"u\"}",
            b"{\"a\":1.,\"user_id\":\"u\"}",
            b"{\"a\":[1,],\"user_id\":\"u\"}",
            b"{\"a\":tru,\"user_id\":\"u\"}",
            b"{\"user_id\":\"\\x\"}",
            b"{\"user_id\":\"u\",}",
        ] {
            assert_eq!(scan(text, false), None, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_prefix_is_read_as_far_as_it_goes() {
        let text = br#"{"job_id":"j","user_id":"u","config":{"prompt":"aaaa"#;
        assert_eq!(scan(text, true), ids(Some("j"), Some("u")));
        assert_eq!(scan(text, false), None, "a whole body must be complete");
        // Cut inside the user id: not read.
        assert_eq!(
            scan(br#"{"job_id":"j","user_id":"u"#, true),
            ids(Some("j"), None)
        );
        // A syntax error before the cut is still refused.
        assert_eq!(scan(br#"{"job_id":"j" "user_id":"u","#, true), None);
    }
}
