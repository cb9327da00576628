//! Dates, datetimes and times as CommCare's Python reads and prints them.
//!
//! A [`Date`] is a proleptic Gregorian day (Python's `date`, years 1 to
//! 9999); a [`DateTime`] is a day and the microseconds into it (a naive
//! `datetime`, UTC by CommCare's convention); a [`Time`] the microseconds
//! into a day. Parsing follows the two ways a UCR value becomes a date:
//!
//! - a document value through a datatype ([`parse_date`], [`parse_datetime`]:
//!   `strptime` with `%Y-%m-%d`, and `%Y-%m-%dT%H:%M:%SZ` or
//!   `%Y-%m-%dT%H:%M:%S.%fZ`, which accept one-digit months, days, hours,
//!   minutes and seconds and either case of `T` and `Z`, as `strptime`
//!   does);
//! - a spec literal that looks like one (jsonobject's string conversion,
//!   [`literal`]): `2015-01-31`, `10:05:00`, `2015-01-31T10:05:00Z`
//!   (any offset is dropped, not applied, as jsonobject does).

use std::fmt;

/// A calendar day: days since 0001-01-01 (Python's `date.toordinal() - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

/// A naive date and time, to the microsecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    /// The day.
    pub date: Date,
    /// Microseconds since midnight.
    pub micros: i64,
}

/// A time of day, to the microsecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub i64);

/// The last day Python's `date` can hold, 9999-12-31.
const MAX_DAY: i32 = 3_652_058;

fn is_leap(y: i32) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days in month `m` of year `y`.
pub fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Date {
    /// The day `y-m-d`, if it exists and lies in years 1 to 9999.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Date> {
        if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        // Days before year y, then before month m, then the day.
        let y0 = y - 1;
        let mut days = y0 * 365 + y0 / 4 - y0 / 100 + y0 / 400;
        for month in 1..m {
            days += days_in_month(y, month) as i32;
        }
        Some(Date(days + d as i32 - 1))
    }

    /// Year, month and day.
    pub fn ymd(self) -> (i32, u32, u32) {
        // 400-year cycles of 146,097 days, then centuries, 4-year cycles, years.
        let mut n = self.0;
        let n400 = n / 146_097;
        n %= 146_097;
        let n100 = (n / 36_524).min(3);
        n -= n100 * 36_524;
        let n4 = n / 1_461;
        n %= 1_461;
        let n1 = (n / 365).min(3);
        n -= n1 * 365;
        let y = n400 * 400 + n100 * 100 + n4 * 4 + n1 + 1;
        let mut m = 1;
        while n >= days_in_month(y, m) as i32 {
            n -= days_in_month(y, m) as i32;
            m += 1;
        }
        (y, m, n as u32 + 1)
    }

    /// This day plus `days`, if still within years 1 to 9999 (Python
    /// raises `OverflowError` otherwise).
    pub fn add_days(self, days: i64) -> Option<Date> {
        let day = self.0 as i64 + days;
        (0..=MAX_DAY as i64)
            .contains(&day)
            .then_some(Date(day as i32))
    }

    /// This day `months` calendar months later (dateutil's
    /// `relativedelta(months=n)`): a day past the end of the target month
    /// becomes its last day.
    pub fn add_months(self, months: i64) -> Option<Date> {
        let (y, m, d) = self.ymd();
        let total = y as i64 * 12 + (m as i64 - 1) + months;
        let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) as u32 + 1);
        let ny = i32::try_from(ny).ok()?;
        if !(1..=9999).contains(&ny) {
            return None;
        }
        Date::from_ymd(ny, nm, d.min(days_in_month(ny, nm)))
    }

    /// The first day of this day's month.
    pub fn month_start(self) -> Date {
        let (y, m, _) = self.ymd();
        Date::from_ymd(y, m, 1).expect("the first of an existing month")
    }

    /// The last day of this day's month.
    pub fn month_end(self) -> Date {
        let (y, m, _) = self.ymd();
        Date::from_ymd(y, m, days_in_month(y, m)).expect("the last of an existing month")
    }
}

impl fmt::Display for Date {
    /// `YYYY-MM-DD`, as Python's `str(date)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iso())
    }
}

impl Date {
    /// `YYYY-MM-DD` (what `str()` gives), digits written by hand: a date
    /// cell is formatted for every row.
    pub fn iso(self) -> String {
        let (y, m, d) = self.ymd();
        let mut out = String::with_capacity(10);
        pillowtop_sdk::time::push_date(&mut out, i64::from(y), m, d);
        out
    }
}

impl DateTime {
    /// Midnight of `date` (Python's `datetime.combine(date, time(0, 0))`).
    pub fn midnight(date: Date) -> DateTime {
        DateTime { date, micros: 0 }
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the RFC 3339 text a timestamp column takes.
    pub fn rfc3339(self) -> String {
        use pillowtop_sdk::time::push_padded;
        let (h, mi, s, us) = split_micros(self.micros);
        let mut out = self.date.iso();
        out.push('T');
        push_padded(&mut out, h as u64, 2);
        out.push(':');
        push_padded(&mut out, mi as u64, 2);
        out.push(':');
        push_padded(&mut out, s as u64, 2);
        out.push('.');
        push_padded(&mut out, us as u64, 6);
        out.push('Z');
        out
    }
}

impl fmt::Display for DateTime {
    /// Python's `str(datetime)`: a space between date and time, and the
    /// microseconds only when there are some.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.date, Time(self.micros))
    }
}

impl fmt::Display for Time {
    /// Python's `str(time)`: `HH:MM:SS`, `.ffffff` only when non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s, us) = split_micros(self.0);
        write!(f, "{h:02}:{m:02}:{s:02}")?;
        if us != 0 {
            write!(f, ".{us:06}")?;
        }
        Ok(())
    }
}

fn split_micros(micros: i64) -> (i64, i64, i64, i64) {
    let secs = micros / 1_000_000;
    (secs / 3600, secs / 60 % 60, secs % 60, micros % 1_000_000)
}

/// One field of a `strptime` format: the texts it may match, in the order
/// Python's regular expression tries them.
#[derive(Clone, Copy)]
enum Field {
    /// `%Y`: four digits.
    Year,
    /// `%m`: `1[0-2]|0[1-9]|[1-9]`.
    Month,
    /// `%d`: `3[01]|[12]\d|0[1-9]|[1-9]| [1-9]`.
    Day,
    /// `%H`: `2[0-3]|[0-1]\d|\d`.
    Hour,
    /// `%M`: `[0-5]\d|\d`.
    Minute,
    /// `%S`: `6[0-1]|[0-5]\d|\d`.
    Second,
    /// `%f`: one to six digits, greedy.
    Fraction,
    /// A literal character, matched ignoring case (Python compiles the
    /// format with `re.IGNORECASE`).
    Lit(u8),
}

fn digit(b: Option<&u8>, range: std::ops::RangeInclusive<u8>) -> bool {
    b.is_some_and(|b| range.contains(b))
}

/// The lengths a field can match at one place, most preferred first: at
/// most six (`%f`), kept inline (a date is read per document per column,
/// and a heap list per field was most of its cost in fuel).
struct Lengths {
    lens: [u8; 6],
    n: usize,
}

impl Lengths {
    fn push(&mut self, ok: bool, len: usize) {
        if ok {
            self.lens[self.n] = len as u8;
            self.n += 1;
        }
    }
}

impl Field {
    /// The lengths this field can match at the start of `s`, most preferred first.
    fn candidates(self, s: &[u8]) -> Lengths {
        let (a, b) = (s.first(), s.get(1));
        let mut out = Lengths { lens: [0; 6], n: 0 };
        match self {
            Field::Year => out.push(s.len() >= 4 && s[..4].iter().all(u8::is_ascii_digit), 4),
            Field::Month => {
                out.push(a == Some(&b'1') && digit(b, b'0'..=b'2'), 2);
                out.push(a == Some(&b'0') && digit(b, b'1'..=b'9'), 2);
                out.push(digit(a, b'1'..=b'9'), 1);
            }
            Field::Day => {
                out.push(a == Some(&b'3') && digit(b, b'0'..=b'1'), 2);
                out.push(digit(a, b'1'..=b'2') && digit(b, b'0'..=b'9'), 2);
                out.push(a == Some(&b'0') && digit(b, b'1'..=b'9'), 2);
                out.push(digit(a, b'1'..=b'9'), 1);
                out.push(a == Some(&b' ') && digit(b, b'1'..=b'9'), 2);
            }
            Field::Hour => {
                out.push(a == Some(&b'2') && digit(b, b'0'..=b'3'), 2);
                out.push(digit(a, b'0'..=b'1') && digit(b, b'0'..=b'9'), 2);
                out.push(digit(a, b'0'..=b'9'), 1);
            }
            Field::Minute => {
                out.push(digit(a, b'0'..=b'5') && digit(b, b'0'..=b'9'), 2);
                out.push(digit(a, b'0'..=b'9'), 1);
            }
            Field::Second => {
                out.push(a == Some(&b'6') && digit(b, b'0'..=b'1'), 2);
                out.push(digit(a, b'0'..=b'5') && digit(b, b'0'..=b'9'), 2);
                out.push(digit(a, b'0'..=b'9'), 1);
            }
            Field::Fraction => {
                let n = s.iter().take(6).take_while(|b| b.is_ascii_digit()).count();
                for len in (1..=n).rev() {
                    out.push(true, len);
                }
            }
            Field::Lit(c) => out.push(a.is_some_and(|a| a.eq_ignore_ascii_case(&c)), 1),
        }
        out
    }
}

/// Match `fields` against the start of `s` as a backtracking regular
/// expression would; on success `out[i]` is the piece field `i` matched
/// (`out` is at least as long as `fields`).
fn match_fields<'s>(fields: &[Field], s: &'s [u8], out: &mut [&'s [u8]]) -> bool {
    let Some((first, rest)) = fields.split_first() else {
        return true;
    };
    let lengths = first.candidates(s);
    for &len in &lengths.lens[..lengths.n] {
        let len = usize::from(len);
        out[0] = &s[..len];
        if match_fields(rest, &s[len..], &mut out[1..]) {
            return true;
        }
    }
    false
}

/// The most fields a format has (`DATETIME_FRACTION_FORMAT`).
const MAX_FIELDS: usize = 14;

/// `strptime(s, format)` for a format given as `fields`: the numbers of
/// the non-literal fields (at most eight), if the whole text matches.
fn strptime(s: &str, fields: &[Field]) -> Option<([i64; 8], usize)> {
    let mut parts: [&[u8]; MAX_FIELDS] = [&[]; MAX_FIELDS];
    if !match_fields(fields, s.as_bytes(), &mut parts) {
        return None;
    }
    // Python's strptime fails with "unconverted data remains".
    if parts[..fields.len()].iter().map(|p| p.len()).sum::<usize>() != s.len() {
        return None;
    }
    let mut numbers = [0i64; 8];
    let mut n = 0;
    for (field, part) in fields.iter().zip(parts) {
        let value = match field {
            Field::Lit(_) => continue,
            // `%f` is padded on the right to microseconds.
            Field::Fraction => digits(part) * 10i64.pow(6 - part.len() as u32),
            // A day may be written ` 5`.
            _ => digits(part.trim_ascii_start()),
        };
        numbers[n] = value;
        n += 1;
    }
    Some((numbers, n))
}

/// The number a run of ASCII digits (as matched) writes.
fn digits(part: &[u8]) -> i64 {
    part.iter()
        .fold(0, |n, d| n * 10 + i64::from(d.wrapping_sub(b'0')))
}

const DATE_FORMAT: &[Field] = &[
    Field::Year,
    Field::Lit(b'-'),
    Field::Month,
    Field::Lit(b'-'),
    Field::Day,
];
const DATETIME_FORMAT: &[Field] = &[
    Field::Year,
    Field::Lit(b'-'),
    Field::Month,
    Field::Lit(b'-'),
    Field::Day,
    Field::Lit(b'T'),
    Field::Hour,
    Field::Lit(b':'),
    Field::Minute,
    Field::Lit(b':'),
    Field::Second,
    Field::Lit(b'Z'),
];
const DATETIME_FRACTION_FORMAT: &[Field] = &[
    Field::Year,
    Field::Lit(b'-'),
    Field::Month,
    Field::Lit(b'-'),
    Field::Day,
    Field::Lit(b'T'),
    Field::Hour,
    Field::Lit(b':'),
    Field::Minute,
    Field::Lit(b':'),
    Field::Second,
    Field::Lit(b'.'),
    Field::Fraction,
    Field::Lit(b'Z'),
];

fn date_of(n: &[i64]) -> Option<Date> {
    Date::from_ymd(
        i32::try_from(n[0]).ok()?,
        u32::try_from(n[1]).ok()?,
        u32::try_from(n[2]).ok()?,
    )
}

fn datetime_of(n: &[i64]) -> Option<DateTime> {
    let date = date_of(n)?;
    let (h, m, s) = (n[3], n[4], n[5]);
    // Python's datetime() refuses second 60 and 61, which %S matches.
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let us = n.get(6).copied().unwrap_or(0);
    Some(DateTime {
        date,
        micros: ((h * 60 + m) * 60 + s) * 1_000_000 + us,
    })
}

/// The most `DATE_FORMAT` can match: `%Y` is four digits, `%m` and `%d`
/// at most two each.
const DATE_MAX: usize = 10;
/// The most `DATETIME_FRACTION_FORMAT` can match (`%f` is at most six
/// digits); `DATETIME_FORMAT` matches at most 20.
const DATETIME_MAX: usize = 27;

/// The year, month and day of `b` when it starts `YYYY-MM-DD` with a
/// month strptime's `%m` takes as two digits (01-12) and a day `%d`
/// takes as two (01-31): what `DATE_FORMAT` matches there, read without
/// backtracking. `None` for any other start, which strptime decides.
fn plain_date(b: &[u8]) -> Option<[i64; 3]> {
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (year, month, day) = (
        number_at(b, 0, 4)?,
        number_at(b, 5, 2)?,
        number_at(b, 8, 2)?,
    );
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some([year, month, day])
}

/// The number the `n` ASCII digits at `at` write, if they are digits.
fn number_at(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = b.get(at..at + n)?;
    part.iter().all(u8::is_ascii_digit).then(|| digits(part))
}

/// The numbers of `b` when it is exactly `YYYY-MM-DDTHH:MM:SSZ` or
/// `YYYY-MM-DDTHH:MM:SS.fZ` (one to six digits of `f`; `T` and `Z` in
/// either case, or a space for the `T`) with every two-digit field one
/// strptime takes whole (hour 00-23, minute 00-59, second 00-61): what
/// the datetime formats match, read without backtracking. `None` for
/// any other text, which strptime decides.
fn plain_datetime(b: &[u8]) -> Option<([i64; 8], usize)> {
    let [year, month, day] = plain_date(b)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let (hour, minute, second) = (
        number_at(b, 11, 2)?,
        number_at(b, 14, 2)?,
        number_at(b, 17, 2)?,
    );
    if hour > 23 || minute > 59 || second > 61 || !matches!(b.last(), Some(b'Z' | b'z')) {
        return None;
    }
    let mut numbers = [year, month, day, hour, minute, second, 0, 0];
    match b.len() {
        20 => Some((numbers, 6)),
        21..=DATETIME_MAX if b[19] == b'.' => {
            let fraction = &b[20..b.len() - 1];
            if fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit) {
                return None;
            }
            numbers[6] = digits(fraction) * 10i64.pow(6 - fraction.len() as u32);
            Some((numbers, 7))
        }
        _ => None,
    }
}

/// CommCare's `iso_string_to_date`: `strptime(s, '%Y-%m-%d')`.
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() > DATE_MAX {
        // Data would remain unconverted.
        return None;
    }
    if b.len() == DATE_MAX
        && let Some(numbers) = plain_date(b)
    {
        return date_of(&numbers);
    }
    let (numbers, n) = strptime(s, DATE_FORMAT)?;
    date_of(&numbers[..n])
}

/// CommCare's `iso_string_to_datetime(s, strict=True)`: `%Y-%m-%dT%H:%M:%SZ`
/// or `%Y-%m-%dT%H:%M:%S.%fZ`; a space for the `T` is taken too, as the
/// current `test_expressions.py` expects of the `datetime` datatype
/// (`"2015-09-30 19:04:27Z"`; earlier versions gave None).
pub fn parse_datetime(s: &str) -> Option<DateTime> {
    if s.len() > DATETIME_MAX {
        // Data would remain unconverted.
        return None;
    }
    if let Some((numbers, n)) = plain_datetime(s.as_bytes()) {
        return datetime_of(&numbers[..n]);
    }
    let spaced;
    let s = if s.as_bytes().get(10) == Some(&b' ') {
        spaced = format!("{}T{}", &s[..10], &s[11..]);
        spaced.as_str()
    } else {
        s
    };
    strptime(s, DATETIME_FORMAT)
        .or_else(|| strptime(s, DATETIME_FRACTION_FORMAT))
        .and_then(|(numbers, n)| datetime_of(&numbers[..n]))
}

/// What jsonobject turns a spec string literal into.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `^\d{4}-(0[1-9]|1[0-2])-([12]\d|0[1-9]|3[01])$`, a real day.
    Date(Date),
    /// `^([01]\d|2[0-3]):([0-5]\d):(([0-5]\d)(\.\d{1,6})?)?$`, with seconds.
    Time(Time),
    /// The date pattern, `T`, the time pattern, then `Z` or an offset
    /// (dropped, not applied).
    DateTime(DateTime),
    /// `^\d+\.\d+$`: a decimal.
    Decimal,
}

fn two(s: &[u8], at: usize, first: std::ops::RangeInclusive<u8>) -> Option<i64> {
    let (a, b) = (*s.get(at)?, *s.get(at + 1)?);
    (first.contains(&a) && b.is_ascii_digit()).then(|| ((a - b'0') * 10 + (b - b'0')) as i64)
}

/// jsonobject's patterns for a date part `YYYY-MM-DD` at the start of `s`.
fn literal_date(s: &[u8]) -> Option<(i64, i64, i64)> {
    if s.len() < 10 || !s[..4].iter().all(u8::is_ascii_digit) || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let y = std::str::from_utf8(&s[..4]).ok()?.parse().ok()?;
    let m = two(s, 5, b'0'..=b'1')?;
    let d = two(s, 8, b'0'..=b'3')?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// jsonobject's time pattern at the start of `s`: `HH:MM:` then optional
/// `SS(.f{1,6})`; how many bytes it took and the time, when the seconds
/// are there (strptime needs them; without them the text stays text).
fn literal_time(s: &[u8]) -> Option<(usize, Option<i64>)> {
    let h = two(s, 0, b'0'..=b'2')?;
    let m = two(s, 3, b'0'..=b'5')?;
    if h > 23 || s.get(2) != Some(&b':') || s.get(5) != Some(&b':') {
        return None;
    }
    let Some(sec) = two(s, 6, b'0'..=b'5') else {
        return Some((6, None));
    };
    let mut end = 8;
    let mut us = 0;
    if s.get(8) == Some(&b'.') {
        let n = s[9..].iter().take_while(|b| b.is_ascii_digit()).count();
        if (1..=6).contains(&n) {
            let digits = std::str::from_utf8(&s[9..9 + n]).ok()?;
            us = format!("{digits:0<6}").parse().ok()?;
            end = 9 + n;
        }
    }
    Some((end, Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)))
}

/// jsonobject's string conversion of a spec literal (its `STRING_CONVERSIONS`:
/// date, time, datetime, decimal, the first pattern that matches decides;
/// a text that matches but does not convert stays text).
pub fn literal(s: &str) -> Option<Literal> {
    let b = s.as_bytes();
    if b.len() == 10
        && let Some((y, m, d)) = literal_date(b)
    {
        return Date::from_ymd(y as i32, m as u32, d as u32).map(Literal::Date);
    }
    if let Some((end, micros)) = literal_time(b)
        && end == b.len()
    {
        return micros.map(|us| Literal::Time(Time(us)));
    }
    if b.len() > 10
        && b[10] == b'T'
        && let (Some((y, m, d)), Some((end, micros))) = (literal_date(b), literal_time(&b[11..]))
    {
        let rest = &b[11 + end..];
        let zone_ok = rest.is_empty()
            || rest == b"Z"
            || ((rest[0] == b'+' || rest[0] == b'-')
                && two(rest, 1, b'0'..=b'2').is_some_and(|h| h <= 23)
                && (rest.len() == 3
                    || (rest.len() == 6
                        && rest[3] == b':'
                        && two(rest, 4, b'0'..=b'5').is_some())));
        if zone_ok {
            // The seconds are required by the conversion (strptime).
            let date = Date::from_ymd(y as i32, m as u32, d as u32);
            return match (date, micros) {
                (Some(date), Some(micros)) => Some(Literal::DateTime(DateTime { date, micros })),
                _ => None,
            };
        }
    }
    let (int, frac) = s.split_once('.')?;
    (!int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit()))
    .then_some(Literal::Decimal)
}

impl DateTime {
    /// This datetime `days` later, if still within years 1 to 9999.
    pub fn add_days(self, days: i64) -> Option<DateTime> {
        Some(DateTime {
            date: self.date.add_days(days)?,
            micros: self.micros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_match_python_ordinals() {
        // date(2015, 1, 1).toordinal() == 735599
        assert_eq!(Date::from_ymd(2015, 1, 1).unwrap().0 + 1, 735_599);
        assert_eq!(Date::from_ymd(1, 1, 1).unwrap().0, 0);
        assert_eq!(Date::from_ymd(9999, 12, 31).unwrap().0, MAX_DAY);
        for day in (0..=MAX_DAY).step_by(997) {
            let (y, m, d) = Date(day).ymd();
            assert_eq!(Date::from_ymd(y, m, d), Some(Date(day)));
        }
        assert_eq!(
            Date::from_ymd(2016, 2, 29).unwrap().to_string(),
            "2016-02-29"
        );
        assert_eq!(Date::from_ymd(2015, 2, 29), None);
    }

    #[test]
    fn strptime_accepts_what_python_accepts() {
        let d = |s: &str| parse_date(s).map(|d| d.to_string());
        assert_eq!(d("2015-01-05").as_deref(), Some("2015-01-05"));
        assert_eq!(d("2015-1-5").as_deref(), Some("2015-01-05"));
        assert_eq!(d("2015-10-5").as_deref(), Some("2015-10-05"));
        assert_eq!(d("2015-01- 5").as_deref(), Some("2015-01-05"));
        assert_eq!(d("2015-02-30"), None);
        assert_eq!(d("2015-01-011"), None);
        assert_eq!(d("15-01-01"), None);
        assert_eq!(d("2015-01-05T10:00:00Z"), None);
        assert_eq!(d(""), None);
        let dt = |s: &str| parse_datetime(s).map(|d| d.to_string());
        assert_eq!(
            dt("2015-04-07T19:07:55Z").as_deref(),
            Some("2015-04-07 19:07:55")
        );
        assert_eq!(
            dt("2015-04-07T19:07:55.437086Z").as_deref(),
            Some("2015-04-07 19:07:55.437086")
        );
        assert_eq!(
            dt("2015-04-07t9:7:5.5z").as_deref(),
            Some("2015-04-07 09:07:05.500000")
        );
        assert_eq!(dt("2015-04-07T19:07:55+00:00"), None);
        assert_eq!(dt("2015-04-07T19:07:60Z"), None);
        assert_eq!(dt("2015-04-07"), None);
        assert_eq!(dt("2015-04-07T24:00:00Z"), None);
    }

    /// The shortcuts for the usual shapes give what strptime gives, on
    /// those shapes and on every one- and two-byte change of them.
    #[test]
    fn plain_shapes_read_as_strptime_reads_them() {
        let slow_date = |s: &str| strptime(s, DATE_FORMAT).and_then(|(n, k)| date_of(&n[..k]));
        let slow_datetime = |s: &str| {
            let s = if s.as_bytes().get(10) == Some(&b' ') {
                format!("{}T{}", &s[..10], &s[11..])
            } else {
                s.to_string()
            };
            strptime(&s, DATETIME_FORMAT)
                .or_else(|| strptime(&s, DATETIME_FRACTION_FORMAT))
                .and_then(|(n, k)| datetime_of(&n[..k]))
        };
        let alphabet = b"0123456789-Tt :.Zzx";
        let bases = [
            "2015-04-07",
            "2015-12-31",
            "2016-02-29",
            "2015-04-07T19:07:55Z",
            "2015-04-07T23:59:59.437086Z",
            "2015-04-07 09:07:05.5z",
            "2015-04-07T19:07:60Z",
        ];
        let mut checked = 0;
        let mut check = |s: &str| {
            assert_eq!(parse_date(s), slow_date(s), "{s:?}");
            assert_eq!(parse_datetime(s), slow_datetime(s), "{s:?}");
            checked += 1;
        };
        for base in bases {
            check(base);
            let b = base.as_bytes();
            for i in 0..b.len() {
                for &c in alphabet {
                    let mut one = b.to_vec();
                    one[i] = c;
                    check(std::str::from_utf8(&one).unwrap());
                    for j in (i + 1)..b.len() {
                        for &d in b"091:Z" {
                            let mut two = one.clone();
                            two[j] = d;
                            check(std::str::from_utf8(&two).unwrap());
                        }
                    }
                }
                let mut cut = b.to_vec();
                cut.remove(i);
                check(std::str::from_utf8(&cut).unwrap());
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn month_arithmetic_clamps_to_the_last_day() {
        let d = Date::from_ymd(2015, 1, 31).unwrap();
        assert_eq!(d.add_months(1).unwrap().to_string(), "2015-02-28");
        assert_eq!(d.add_months(13).unwrap().to_string(), "2016-02-29");
        assert_eq!(d.add_months(-2).unwrap().to_string(), "2014-11-30");
        assert_eq!(d.month_end().to_string(), "2015-01-31");
        assert_eq!(d.month_start().to_string(), "2015-01-01");
        assert_eq!(Date(MAX_DAY).add_days(1), None);
        assert_eq!(Date(0).add_months(-1), None);
    }

    #[test]
    fn literals_convert_as_jsonobject_converts_them() {
        let date = Date::from_ymd(2015, 1, 31).unwrap();
        assert_eq!(literal("2015-01-31"), Some(Literal::Date(date)));
        assert_eq!(literal("2015-02-30"), None);
        assert_eq!(literal("2015-1-31"), None);
        assert_eq!(
            literal("10:05:00"),
            Some(Literal::Time(Time(36_300_000_000)))
        );
        assert_eq!(literal("10:05:"), None);
        assert_eq!(
            literal("2015-01-31T10:05:00.5+05:30"),
            Some(Literal::DateTime(DateTime {
                date,
                micros: 36_300_500_000
            }))
        );
        assert_eq!(
            literal("2015-01-31T10:05:00Z").map(|l| match l {
                Literal::DateTime(d) => d.to_string(),
                _ => String::new(),
            }),
            Some("2015-01-31 10:05:00".into())
        );
        assert_eq!(literal("1.5"), Some(Literal::Decimal));
        assert_eq!(literal("-1.5"), None);
        assert_eq!(literal("1."), None);
        assert_eq!(literal("hello"), None);
        assert_eq!(
            DateTime { date, micros: 1 }.rfc3339(),
            "2015-01-31T00:00:00.000001Z"
        );
    }
}
