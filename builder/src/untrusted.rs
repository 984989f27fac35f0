//! Input bytes made safe for a message: escaped and cut short.

/// How much of an input a message quotes.
pub const QUOTE_MAX: usize = 64;

/// `bytes` as printable ASCII (`\n`, `\x1b`, `\xff` escaped), cut to
/// [`QUOTE_MAX`] input bytes with the total said, for quoting untrusted
/// input (a file's content, an archive's entry name) in an error.
pub fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_MAX)];
    let mut s = shown.escape_ascii().to_string();
    if shown.len() < bytes.len() {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// A whole message with control characters other than newline escaped: the
/// last guard before a terminal, for messages from libraries that may quote
/// their input raw.
pub fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_escaped_and_short() {
        assert_eq!(quote(b"ok name"), "ok name");
        assert_eq!(quote(b"a\x1b[2Jb\n\xff"), "a\\x1b[2Jb\\n\\xff");
        let long = vec![b'x'; 1000];
        let q = quote(&long);
        assert!(q.ends_with("... (1000 bytes)") && q.len() < 100, "{q}");
        assert_eq!(printable("line\nnext\x07\u{9b}"), "line\nnext\\u{7}\\u{9b}");
    }
}
