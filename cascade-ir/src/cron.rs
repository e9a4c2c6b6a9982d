//! Five-field cron expressions in UTC: parsing, validation and next-tick
//! computation, shared by the `dag!` macro (compile-time checks) and the
//! runtime's scheduler.

use std::fmt;

/// Why a cron expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// Not five or six fields and not a known `@alias`.
    #[error(
        "expected five fields `minute hour day-of-month month day-of-week` (or six, with seconds first) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, found {found} field(s)"
    )]
    FieldCount {
        /// How many fields were found.
        found: usize,
    },
    /// A field that does not parse or is out of range.
    #[error("{field} field `{value}`: {reason}")]
    Field {
        /// `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The field as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The expression parses but names no date that exists, such as February 30.
    #[error("it never fires: no month in the schedule has the days it names")]
    NeverFires,
}

/// A parsed cron schedule, evaluated in UTC.
///
/// Five fields, or six with a leading seconds field (0–59) for sub-minute
/// schedules. Fields: minute (0–59), hour (0–23), day of month (1–31), month (1–12 or
/// JAN–DEC), day of week (0–7, 0 and 7 are Sunday, or SUN–SAT). Each field takes
/// `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, and comma lists.
/// As in Vixie cron, when both day fields are restricted a day matches either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expression: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_restricted: bool,
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronSchedule {
    /// Parses and checks an expression; an expression that can never fire is an error.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let trimmed = expression.trim();
        let expanded = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let all_fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, fields) = match all_fields.len() {
            5 => (1, &all_fields[..]),
            6 => (
                parse_field(all_fields[0], "second", 0, 59, &[])?,
                &all_fields[1..],
            ),
            found => return Err(CronError::FieldCount { found }),
        };
        let minutes = parse_field(fields[0], "minute", 0, 59, &[])?;
        let hours = parse_field(fields[1], "hour", 0, 23, &[])?;
        let days_of_month = parse_field(fields[2], "day-of-month", 1, 31, &[])?;
        let months = parse_field(fields[3], "month", 1, 12, &MONTHS)?;
        let mut days_of_week = parse_field(fields[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        let schedule = CronSchedule {
            expression: trimmed.to_owned(),
            seconds,
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
        };
        if !schedule.can_fire() {
            return Err(CronError::NeverFires);
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether some real date matches. Only a restricted day of month with an
    /// unrestricted day of week can fail: February 30, April 31 and the like.
    fn can_fire(&self) -> bool {
        if self.dow_restricted {
            return true;
        }
        (1..=12u32).any(|month| {
            self.months & (1 << month) != 0
                && (1..=days_in_month(2000, month)).any(|day| self.days_of_month & (1 << day) != 0)
        })
    }

    fn day_matches(&self, month: u32, day: u32, weekday: u32) -> bool {
        if self.months & (1 << month) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << day) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first tick strictly after `after`, both in seconds since the Unix
    /// epoch (UTC). `None` only past the year 9999.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = after + 1;
        let first_day = start.div_euclid(86_400);
        let mut second_of_day = start.rem_euclid(86_400);
        // Nine years cover the longest gap (February 29 across a skipped leap year).
        for day in first_day..first_day + 9 * 366 {
            let (year, month, dom) = civil_from_days(day);
            if year > 9999 {
                return None;
            }
            let weekday = (day + 4).rem_euclid(7) as u32;
            if self.day_matches(month, dom, weekday)
                && let Some(second) = self.first_time_from(second_of_day)
            {
                return Some(day * 86_400 + second);
            }
            second_of_day = 0;
        }
        None
    }

    /// The first matching time of day at or after `from` (seconds into the day).
    fn first_time_from(&self, from: i64) -> Option<i64> {
        let (mut h, mut m, mut s) = (from / 3600, from / 60 % 60, from % 60);
        while h < 24 {
            if self.hours & (1 << h) != 0 {
                while m < 60 {
                    if self.minutes & (1 << m) != 0
                        && let Some(second) = (s..60).find(|&s| self.seconds & (1 << s) != 0)
                    {
                        return Some(h * 3600 + m * 60 + second);
                    }
                    m += 1;
                    s = 0;
                }
            }
            h += 1;
            m = 0;
            s = 0;
        }
        None
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

fn parse_field(
    field: &str,
    name: &'static str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<u64, CronError> {
    let err = |reason: String| CronError::Field {
        field: name,
        value: field.to_owned(),
        reason,
    };
    let value = |s: &str| -> Result<u32, CronError> {
        let offset = if name == "month" { 1 } else { 0 };
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + offset);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| err(format!("`{s}` is not a number from {min} to {max}")))?;
        if v < min || v > max {
            return Err(err(format!("{v} is out of range {min}-{max}")));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in field.split(',') {
        if part.is_empty() {
            return Err(err("empty list entry".to_owned()));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                // A step beyond the field's span could only ever match the
                // first value: refuse it rather than guess what was meant.
                let span = max - min + 1;
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| (1..=span).contains(s))
                    .ok_or_else(|| err(format!("step `{step}` must be a number from 1 to {span}")))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(err(format!("range {a}-{b} is backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` means from a to the end in steps of n.
            (a, if part.contains('/') { max } else { a })
        };
        bits |= (lo..=hi)
            .step_by(step as usize)
            .fold(0u64, |bits, v| bits | 1 << v);
    }
    Ok(bits)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Converts days since 1970-01-01 to (year, month, day) in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time, for readable tests.
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        // days_from_civil
        let y2 = if mo <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(at(2024, 2, 29, 0, 0) / 86_400), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn next_tick_of_common_schedules() {
        let now = at(2026, 11, 26, 5, 3);
        let hourly = CronSchedule::parse("@hourly").expect("valid");
        assert_eq!(hourly.next_after(now), Some(at(2026, 11, 26, 6, 0)));
        let every_15 = CronSchedule::parse("*/15 * * * *").expect("valid");
        assert_eq!(every_15.next_after(now), Some(at(2026, 11, 26, 5, 15)));
        assert_eq!(
            every_15.next_after(at(2026, 11, 26, 5, 15)),
            Some(at(2026, 11, 26, 5, 30))
        );
        let weekdays_9am = CronSchedule::parse("0 9 * * MON-FRI").expect("valid");
        // 2026-11-26 is a Thursday; Friday 9:00, then Monday 9:00.
        assert_eq!(weekdays_9am.next_after(now), Some(at(2026, 11, 26, 9, 0)));
        assert_eq!(
            weekdays_9am.next_after(at(2026, 11, 27, 9, 0)),
            Some(at(2026, 11, 30, 9, 0))
        );
        let leap = CronSchedule::parse("0 0 29 2 *").expect("valid");
        assert_eq!(leap.next_after(now), Some(at(2028, 2, 29, 0, 0)));
        let sunday_as_7 = CronSchedule::parse("30 1 * * 7").expect("valid");
        assert_eq!(sunday_as_7.next_after(now), Some(at(2026, 11, 29, 1, 30)));
        // Both day fields restricted: either matches.
        let either = CronSchedule::parse("0 0 1 * MON").expect("valid");
        assert_eq!(either.next_after(now), Some(at(2026, 11, 30, 0, 0)));
        assert_eq!(
            either.next_after(at(2026, 11, 30, 0, 0)),
            Some(at(2026, 12, 1, 0, 0))
        );
    }

    #[test]
    fn seconds_field() {
        let now = at(2026, 11, 26, 5, 3) + 7;
        let every_second = CronSchedule::parse("* * * * * *").expect("valid");
        assert_eq!(every_second.next_after(now), Some(now + 1));
        let every_10s = CronSchedule::parse("*/10 * * * * *").expect("valid");
        assert_eq!(every_10s.next_after(now), Some(at(2026, 11, 26, 5, 3) + 10));
        assert_eq!(
            every_10s.next_after(at(2026, 11, 26, 5, 3) + 50),
            Some(at(2026, 11, 26, 5, 4))
        );
        // Five fields fire at second 0.
        let minutely = CronSchedule::parse("* * * * *").expect("valid");
        assert_eq!(minutely.next_after(now), Some(at(2026, 11, 26, 5, 4)));
        assert_eq!(
            minutely.next_after(at(2026, 11, 26, 23, 59)),
            Some(at(2026, 11, 27, 0, 0))
        );
    }

    #[test]
    fn rejects_bad_expressions() {
        assert_eq!(
            CronSchedule::parse("* * * *"),
            Err(CronError::FieldCount { found: 4 })
        );
        assert!(matches!(
            CronSchedule::parse("60 * * * *"),
            Err(CronError::Field { field: "minute", .. })
        ));
        assert!(matches!(
            CronSchedule::parse("* * * * 8"),
            Err(CronError::Field {
                field: "day-of-week",
                ..
            })
        ));
        assert!(matches!(
            CronSchedule::parse("*/0 * * * *"),
            Err(CronError::Field { field: "minute", .. })
        ));
        assert!(matches!(
            CronSchedule::parse("5-1 * * * *"),
            Err(CronError::Field { .. })
        ));
        assert_eq!(CronSchedule::parse("0 0 30 2 *"), Err(CronError::NeverFires));
        assert_eq!(
            CronSchedule::parse("0 0 31 4,6,9,11 *"),
            Err(CronError::NeverFires)
        );
        assert!(CronSchedule::parse("0 0 31 4,5 *").is_ok());
    }

    #[test]
    fn rejects_huge_steps_and_numbers() {
        for (expression, field, reason) in [
            (
                "*/4294967295 * * * *",
                "minute",
                "step `4294967295` must be a number from 1 to 60",
            ),
            (
                "5/4294967295 * * * *",
                "minute",
                "step `4294967295` must be a number from 1 to 60",
            ),
            (
                "0-59/4294967295 * * * *",
                "minute",
                "step `4294967295` must be a number from 1 to 60",
            ),
            (
                "* */4294967296 * * *",
                "hour",
                "step `4294967296` must be a number from 1 to 24",
            ),
            (
                "* * */99999999999999999999 * *",
                "day-of-month",
                "step `99999999999999999999` must be a number from 1 to 31",
            ),
            ("* * * 1/13 *", "month", "step `13` must be a number from 1 to 12"),
            (
                "* * * * */-1",
                "day-of-week",
                "step `-1` must be a number from 1 to 8",
            ),
            ("4294967295 * * * *", "minute", "4294967295 is out of range 0-59"),
            (
                "99999999999 * * * *",
                "minute",
                "`99999999999` is not a number from 0 to 59",
            ),
            ("* 1-4294967295 * * *", "hour", "4294967295 is out of range 0-23"),
            (
                "*/4294967295 * * * * *",
                "second",
                "step `4294967295` must be a number from 1 to 60",
            ),
        ] {
            match CronSchedule::parse(expression) {
                Err(CronError::Field {
                    field: got,
                    reason: why,
                    ..
                }) => {
                    assert_eq!((got, why.as_str()), (field, reason), "{expression}");
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
        // The largest steps still work: they fire at the first value only.
        let once_an_hour = CronSchedule::parse("*/60 * * * *").expect("valid");
        assert_eq!(once_an_hour.next_after(0), Some(3600));
        let every_59 = CronSchedule::parse("*/59 * * * *").expect("valid");
        assert_eq!(every_59.next_after(0), Some(59 * 60));
    }
}
