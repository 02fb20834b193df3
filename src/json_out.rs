//! Hand-written JSON for the per-request hot paths (audit lines, completion answers, stream
//! chunks): serde_json escapes strings a byte at a time through its generic serializer, which
//! profiles showed as the largest single cost of the gateway's own work. Everything else
//! still goes through serde. Output is any `BufMut`: a `Vec<u8>` or the SSE `BytesMut`.

use std::time::Duration;

use bytes::BufMut;

pub fn int(out: &mut impl BufMut, v: impl itoa::Integer) {
    out.put_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub fn opt_int(out: &mut impl BufMut, v: Option<impl itoa::Integer>) {
    match v {
        Some(v) => int(out, v),
        None => out.put_slice(b"null"),
    }
}

/// Milliseconds with microsecond precision: `12.345`.
pub fn ms_into(out: &mut impl BufMut, d: Duration) {
    let us = d.as_micros();
    int(out, us / 1000);
    let frac = us % 1000;
    out.put_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

pub fn opt_ms(out: &mut impl BufMut, d: Option<Duration>) {
    match d {
        Some(d) => ms_into(out, d),
        None => out.put_slice(b"null"),
    }
}

pub fn json_opt_str(out: &mut impl BufMut, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.put_slice(b"null"),
    }
}

/// A JSON string: quotes, backslashes and control characters escaped, the rest as is.
pub fn json_str(out: &mut impl BufMut, s: &str) {
    out.put_u8(b'"');
    // Whole 16-byte blocks are tested without an early exit (so the test vectorises); clean
    // runs, which is nearly everything (ids, paths, model names, prose), are copied at once.
    let bytes = s.as_bytes();
    let mut clean_from = 0;
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let block = &bytes[at..at + 16];
        if block.iter().fold(false, |d, &b| d | needs_escape(b)) {
            out.put_slice(&bytes[clean_from..at]);
            escape_into(out, block);
            clean_from = at + 16;
        }
        at += 16;
    }
    let tail = &bytes[at..];
    if tail.iter().fold(false, |d, &b| d | needs_escape(b)) {
        out.put_slice(&bytes[clean_from..at]);
        escape_into(out, tail);
    } else {
        out.put_slice(&bytes[clean_from..]);
    }
    out.put_u8(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_into(out: &mut impl BufMut, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.put_slice(&bytes[run..i]);
        run = i + 1;
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            _ => out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.put_slice(&bytes[run..]);
}

/// A client-supplied string as a log or an answer keeps it: at most `max` characters, so a client
/// cannot grow the audit log by megabytes per request.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => s[..cut].to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_serde() {
        let cases = [
            "",
            "plain",
            "exactly sixteen!",
            "quote \" and backslash \\ and\nnewline\ttab\r\u{1}\u{1f}",
            "ünïcödé 中文 and emoji 🦀 spread over more than sixteen bytes, twice over",
            "0123456789abcdef0123456789abcde\"",
            "\u{7f}\u{2028} are not escaped by serde either",
        ];
        for c in cases {
            let mut out = Vec::new();
            json_str(&mut out, c);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(c).unwrap()
            );
        }
    }
}
