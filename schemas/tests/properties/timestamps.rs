//! Timestamps at the ends of the years RFC 3339 can write, with any offset.

use proptest::prelude::*;
use switchboard_schemas::Timestamp;

proptest! {
    /// Found by fuzzing (fuzz/, target `event_fields`): a local time on the last or
    /// first day of the range whose offset moves it out in UTC used to panic in the
    /// time crate. It is refused exactly when UTC leaves years 0000-9999.
    #[test]
    fn offsets_at_the_ends_of_the_range_never_panic(
        last_day in any::<bool>(),
        second_of_day in 0u32..86_400,
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
        offset_minutes in -(23 * 60 + 59)..=(23i32 * 60 + 59),
    ) {
        let date = if last_day { "9999-12-31" } else { "0000-01-01" };
        let (hours, minutes, seconds) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let offset = offset_minutes.unsigned_abs();
        let text = format!(
            "{date}T{hours:02}:{minutes:02}:{seconds:02}.{nanos:09}{sign}{:02}:{:02}",
            offset / 60,
            offset % 60
        );
        let utc_second_of_day = i64::from(second_of_day) - i64::from(offset_minutes) * 60;
        let in_range = if last_day { utc_second_of_day < 86_400 } else { utc_second_of_day >= 0 };
        let parsed = Timestamp::parse(&text);
        prop_assert_eq!(parsed.is_ok(), in_range, "{}: {:?}", text, parsed);
        if let Ok(time) = parsed {
            prop_assert_eq!(Timestamp::parse(&time.to_string()), Ok(time));
        }
    }
}
