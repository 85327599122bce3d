//! Reading the runtime's log: which lines say what, their `key=value` fields, and when they
//! were written.
//!
//! The log is `tracing`'s default text format without colours (stderr is a file):
//! `2026-01-02T03:04:05.678901Z  INFO message text key=value key=value`. Tests assert on Redis
//! state first; the log is for what Redis cannot show (a refused plugin, a swap, timings).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lines of `log` that contain `needle`, in order.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(needle)).collect()
}

/// The lines of `log` that contain every one of `needles`, in order.
pub fn lines_with_all<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .collect()
}

/// The value of the `key=value` field of a log line (up to the next space), if it has one.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    line.split(' ')
        .find_map(|word| word.strip_prefix(prefix.as_str()))
}

/// The `ms=N` field of a log line as a number; panics naming the line if it has none.
pub fn ms_field(line: &str) -> u64 {
    field(line, "ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no `ms=<number>` field in log line: {line}"))
}

/// When a log line was written, from its leading UTC timestamp
/// (`2026-01-02T03:04:05.678901Z`); panics naming the line if it does not start with one.
pub fn timestamp(line: &str) -> SystemTime {
    parse_timestamp(line.split_whitespace().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("log line does not start with an RFC 3339 UTC time: {line}"))
}

fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(str::parse::<u64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    // Fractional seconds of any precision, as nanoseconds.
    let digits = fraction.get(..fraction.len().min(9))?;
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[test]
fn timestamps_parse_to_the_instant_they_name() {
    let line = "2026-11-23T21:09:06.998636Z  INFO pipeline started pipeline=p ms=56";
    let since_epoch = timestamp(line).duration_since(UNIX_EPOCH).unwrap();
    // date -u -d 2026-11-23T21:09:06Z +%s
    assert_eq!(since_epoch, Duration::new(1_795_468_146, 998_636_000));
    assert_eq!(field(line, "pipeline"), Some("p"));
    assert_eq!(ms_field(line), 56);
}
