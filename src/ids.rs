//! Request, completion and tool-call ids: 128 random bits as hex.
//!
//! They need to be unique, not secret, so they come from a fast thread-local generator
//! (seeded once per thread from the OS) instead of a getrandom(2) system call per id, which
//! showed up in profiles at two ids per request.

/// 32 lowercase hex digits.
pub fn hex128() -> String {
    let mut s = String::with_capacity(32);
    push_hex128(&mut s);
    s
}

/// Appends 32 lowercase hex digits.
pub fn push_hex128(out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = fastrand::u128(..);
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_and_well_formed() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| super::hex128()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
