//! RFC 3339 timestamps as Ollama and the policy write them, parsed without a date library:
//! `2025-05-04T17:37:44.706015396-07:00`, `2026-12-31T00:00:00Z`.

/// Seconds since the epoch of `2025-05-04T17:37:44.706015396-07:00` (offset applied).
pub fn parse(s: &str) -> Option<u64> {
    let num = |a: usize, b: usize| {
        let part = s.get(a..b)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse::<i64>().ok())?
    };
    let sep = |i: usize, allowed: &[u8]| s.as_bytes().get(i).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let tail = s.get(19..)?;
    let tz_at = tail.find(['Z', '+', '-']).map(|i| i + 19);
    let offset = match tz_at.and_then(|i| s.get(i..)) {
        Some(tz) if tz.starts_with('+') || tz.starts_with('-') => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let oh = tz.get(1..3)?.parse::<i64>().ok()?;
            let om = tz.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => 0,
    };
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se - offset).ok()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The instant of a policy's RFC 3339 timestamp (a key's `expires_at`, `not_before`), read
/// strictly: a real calendar date (`2026-02-31` is refused, not read as 3 March), an offset
/// (`Z` or `+hh:mm` within range), nothing after it. A key's validity is a security bound:
/// a typo must be an error, never a different instant.
pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_offsets() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse("2025-05-04T17:37:44.706015396-07:00"),
            Some(1_746_405_464)
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse("2026-12-01 25:00:00Z"), None);
        assert_eq!(parse("2026/12/01T00:00:00Z"), None);
        assert_eq!(parse("2026-12-31T23:59:59Z"), Some(1_798_761_599));
    }

    #[test]
    fn policy_times_are_strict() {
        let secs =
            |s: &str| parse_time(s).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        assert_eq!(
            secs("2026-12-31T23:59:59Z").map(|d| d.as_secs()),
            Some(1_798_761_599)
        );
        assert_eq!(
            secs("2027-01-01T01:00:00+01:00").map(|d| d.as_secs()),
            Some(1_798_761_600)
        );
        for bad in [
            "2026-02-31T00:00:00Z",
            "2026-12-31T00:00:00",
            "2026-12-31T00:00:00+99:99",
            "2026-12-31T00:00:00Zjunk",
            "2026-12-31",
        ] {
            assert!(parse_time(bad).is_none(), "{bad}");
        }
    }
}
