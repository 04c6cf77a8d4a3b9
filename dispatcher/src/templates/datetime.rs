//! Dates, times and durations as a customer reads them, in the event's
//! locale and time zone (seed 000's `date_locales`, `time_zone`,
//! `time_zone_name`).

use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Timelike};
use chrono_tz::Tz;
use shared::event::DateLocale;

const MONTHS_RU: [&str; 12] = [
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
];

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

pub fn locale_tag(locale: DateLocale) -> &'static str {
    match locale {
        DateLocale::RuRu => "ru-RU",
        DateLocale::EnUs => "en-US",
    }
}

/// Where and how to show a moment.
#[derive(Debug, Clone)]
pub struct Clock {
    pub locale: DateLocale,
    /// `None` when the zone name did not parse (ingest validates it, so only
    /// a hand-made event gets here): the source's own offset is kept.
    pub zone: Option<Tz>,
    /// Appended in parentheses after the time; nothing when empty.
    pub zone_name: String,
}

/// What part of a moment to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Date, time and the zone name: `1 декабря 2026, 10:00 (Мск)`.
    Full,
    /// Date and time without the zone name.
    DateTime,
    /// `1 декабря 2026` / `December 1, 2026`.
    Date,
    /// `10:00` / `10:00 AM`.
    Time,
}

impl Style {
    pub fn parse(s: &str) -> Option<Style> {
        match s {
            "full" => Some(Style::Full),
            "datetime" => Some(Style::DateTime),
            "date" => Some(Style::Date),
            "time" => Some(Style::Time),
            _ => None,
        }
    }
}

impl Clock {
    pub fn new(locale: DateLocale, time_zone: &str, zone_name: &str) -> Clock {
        Clock {
            locale,
            zone: Tz::from_str(time_zone).ok(),
            zone_name: zone_name.trim().to_string(),
        }
    }

    /// Wall-clock time in the configured zone.
    pub fn local(&self, t: &DateTime<FixedOffset>) -> NaiveDateTime {
        match self.zone {
            Some(tz) => t.with_timezone(&tz).naive_local(),
            None => t.naive_local(),
        }
    }

    pub fn format(&self, t: &DateTime<FixedOffset>, style: Style) -> String {
        let local = self.local(t);
        let date = || match self.locale {
            DateLocale::RuRu => format!(
                "{} {} {}",
                local.day(),
                MONTHS_RU[local.month0() as usize],
                local.year()
            ),
            DateLocale::EnUs => format!(
                "{} {}, {}",
                MONTHS_EN[local.month0() as usize],
                local.day(),
                local.year()
            ),
        };
        let time = || match self.locale {
            DateLocale::RuRu => format!("{:02}:{:02}", local.hour(), local.minute()),
            DateLocale::EnUs => {
                let (pm, hour) = local.hour12();
                let ampm = if pm { "PM" } else { "AM" };
                format!("{hour}:{:02} {ampm}", local.minute())
            }
        };
        match style {
            Style::Date => date(),
            Style::Time => time(),
            Style::DateTime => format!("{}, {}", date(), time()),
            Style::Full if self.zone_name.is_empty() => format!("{}, {}", date(), time()),
            Style::Full => format!("{}, {} ({})", date(), time(), self.zone_name),
        }
    }

    /// A strftime pattern (`%d.%m.%Y %H:%M`) over the local wall-clock time.
    /// Month and day names in patterns are English (chrono's).
    pub fn strftime(&self, t: &DateTime<FixedOffset>, pattern: &str) -> Result<String, String> {
        use std::fmt::Write;
        let mut out = String::new();
        write!(out, "{}", self.local(t).format(pattern))
            .map_err(|_| format!("invalid date pattern {pattern:?}"))?;
        Ok(out)
    }
}

/// `1 ч 30 мин` / `1 h 30 min`.
pub fn duration(minutes: u32, locale: DateLocale) -> String {
    let (h, m) = (minutes / 60, minutes % 60);
    let (hu, mu) = match locale {
        DateLocale::RuRu => ("ч", "мин"),
        DateLocale::EnUs => ("h", "min"),
    };
    match (h, m) {
        (0, m) => format!("{m} {mu}"),
        (h, 0) => format!("{h} {hu}"),
        (h, m) => format!("{h} {hu} {m} {mu}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn converts_into_the_zone_and_formats_per_locale() {
        let at = t("2026-12-01T10:00:00+03:00");
        let ru = Clock::new(DateLocale::RuRu, "Europe/Moscow", "Мск");
        assert_eq!(ru.format(&at, Style::Full), "1 декабря 2026, 10:00 (Мск)");
        let en = Clock::new(DateLocale::EnUs, "Asia/Yekaterinburg", "YEKT");
        assert_eq!(
            en.format(&at, Style::Full),
            "December 1, 2026, 12:00 PM (YEKT)"
        );
        assert_eq!(en.format(&at, Style::Date), "December 1, 2026");
        assert_eq!(en.format(&at, Style::Time), "12:00 PM");
        assert_eq!(ru.format(&at, Style::DateTime), "1 декабря 2026, 10:00");
    }

    #[test]
    fn midnight_noon_and_the_date_line() {
        let en = Clock::new(DateLocale::EnUs, "America/New_York", "");
        // 03:30 UTC on 1 March is 22:30 on 28 February in New York.
        let at = t("2026-03-01T03:30:00+00:00");
        assert_eq!(en.format(&at, Style::Full), "February 28, 2026, 10:30 PM");
        let midnight = t("2026-03-01T05:05:00+00:00");
        assert_eq!(en.format(&midnight, Style::Time), "12:05 AM");
        let ru = Clock::new(DateLocale::RuRu, "Asia/Vladivostok", "Влад");
        assert_eq!(
            ru.format(&t("2026-05-31T20:07:00+03:00"), Style::Full),
            "1 июня 2026, 03:07 (Влад)"
        );
    }

    #[test]
    fn an_unknown_zone_keeps_the_source_offset() {
        let c = Clock::new(DateLocale::RuRu, "Mars/Base", "M");
        assert!(c.zone.is_none());
        assert_eq!(
            c.format(&t("2026-12-01T10:00:00+03:00"), Style::Time),
            "10:00"
        );
    }

    #[test]
    fn strftime_and_durations() {
        let c = Clock::new(DateLocale::RuRu, "Asia/Yekaterinburg", "YEKT");
        assert_eq!(
            c.strftime(&t("2026-12-01T10:00:00+03:00"), "%d.%m.%Y %H:%M")
                .unwrap(),
            "01.12.2026 12:00"
        );
        assert_eq!(duration(45, DateLocale::RuRu), "45 мин");
        assert_eq!(duration(60, DateLocale::RuRu), "1 ч");
        assert_eq!(duration(90, DateLocale::EnUs), "1 h 30 min");
    }
}
