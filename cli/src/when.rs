//! Times and durations as operators type them: `--since 2h`, `--until 2026-11-22T14:30:00Z`,
//! `--ttl 15m`.
//!
//! Owns only the parsing of these arguments; what a time means for a command (stream
//! store time, token expiry) is the command's business.

use std::time::Duration;

use switchboard_schemas::Timestamp;

/// Parses a duration: one or more `<number><unit>` with units `s`, `m`, `h`, `d`, `w`
/// (`90s`, `15m`, `2h`, `3d`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration `{text}`: write it like 90s, 15m, 2h, 3d, 1w or 1h30m");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(invalid()),
        };
        let value: u64 = number.parse().map_err(|_| invalid())?;
        number.clear();
        total = value
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(invalid)?;
    }
    if !number.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Parses an instant: RFC 3339, or a duration meaning "that long ago".
pub fn parse_instant(text: &str) -> Result<Timestamp, String> {
    if let Ok(instant) = Timestamp::parse(text) {
        return Ok(instant);
    }
    let ago = parse_duration(text).map_err(|_| {
        format!(
            "invalid time `{text}`: give RFC 3339 (2026-11-22T14:30:00Z) or a duration ago \
             (90s, 15m, 2h, 3d)"
        )
    })?;
    let now = Timestamp::now().as_offset_date_time();
    Timestamp::from_offset_date_time(now - ago).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "2",
            "h",
            "2x",
            "-2h",
            "2h3",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instants() {
        assert_eq!(
            parse_instant("2026-11-22T16:30:00+02:00")
                .unwrap()
                .to_string(),
            "2026-11-22T14:30:00Z"
        );
        let two_hours_ago = parse_instant("2h").unwrap().unix_nanos();
        let expected = Timestamp::now().unix_nanos() - 7200 * 1_000_000_000;
        assert!((two_hours_ago - expected).abs() < 5_000_000_000);
        assert!(parse_instant("yesterday").is_err());
    }
}
