//! When an event's message may go out (issue 11): a delay after the event
//! or a reminder before a booking's start (`[tenants.delays]`), and only
//! within the tenant's send hours in the event's time zone
//! (`[tenants.send_hours]`). Computed afresh from the event and the clock
//! each time a worker takes it, so it holds no state: an event that is not
//! due yet waits in the broker's delay ladder (`shared::topology`, one
//! fixed-TTL queue per power of two seconds) and comes back, and a restart,
//! a redelivery or a second attempt computes the same moment again.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use shared::event::Event;
use shared::tenant::{Delay, SendHours};

/// What to do with an event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Due: send.
    Now,
    /// Not yet: wait until then.
    At(DateTime<Utc>),
    /// Its moment has passed (a reminder for a booking already started).
    Expired { starts_at: DateTime<Utc> },
}

/// The moment the delay alone asks for, or `None` without a delay (or a
/// reminder for an event without a start time: sent at once).
pub fn due(event: &Event, delay: Option<&Delay>) -> Option<DateTime<Utc>> {
    let delay = delay?;
    if let Some(after) = delay.after_secs {
        return Some(event.occurred_at + secs(after));
    }
    let before = delay.before_start_secs?;
    let start = event.params.starts_at?.with_timezone(&Utc);
    Some(start - secs(before))
}

fn secs(n: u64) -> Duration {
    Duration::seconds(
        i64::try_from(n)
            .unwrap_or(i64::MAX / 1000)
            .min(i64::MAX / 1000),
    )
}

/// The first moment at or after `t` inside the send hours, in `zone`.
pub fn next_open(t: DateTime<Utc>, hours: &SendHours, zone: Tz) -> DateTime<Utc> {
    let local = t.with_timezone(&zone);
    let second = local.num_seconds_from_midnight();
    if hours.contains(second) {
        return t;
    }
    // Outside: the window opens at `from` today if that is still ahead,
    // else tomorrow (a window over midnight is outside only between `to`
    // and `from`, so its opening is always today).
    let day = if second < hours.from {
        local.date_naive()
    } else {
        local.date_naive() + Duration::days(1)
    };
    let from =
        NaiveTime::from_num_seconds_from_midnight_opt(hours.from, 0).unwrap_or(NaiveTime::MIN);
    let naive = day.and_time(from);
    // A window opening inside a daylight-saving gap opens when the clock
    // jumps past it.
    zone.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map_or(t, |open| open.with_timezone(&Utc))
}

/// When this event's message may go out, seen at `now`.
pub fn when(
    event: &Event,
    delay: Option<&Delay>,
    hours: Option<&SendHours>,
    zone: Tz,
    now: DateTime<Utc>,
) -> When {
    let mut at = due(event, delay).map_or(now, |d| d.max(now));
    if let Some(hours) = hours {
        at = next_open(at, hours, zone);
    }
    // A reminder is worth nothing once the booking has started.
    if delay.is_some_and(|d| d.before_start_secs.is_some())
        && let Some(start) = event.params.starts_at.map(|s| s.with_timezone(&Utc))
        && at >= start
    {
        return When::Expired { starts_at: start };
    }
    if at > now { When::At(at) } else { When::Now }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::{EventKind, Params, Recipient, SCHEMA_VERSION};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn event(occurred: &str, starts: Option<&str>) -> Event {
        Event {
            schema: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant: "acme".into(),
            source: shared::SourceId::Iiko,
            kind: EventKind::OrderCompleted,
            occurred_at: at(occurred),
            received_at: at(occurred),
            dedup_key: "k".into(),
            source_ref: None,
            location: None,
            recipient: Recipient::default(),
            params: Params {
                starts_at: starts.map(|s| s.parse().unwrap()),
                ..Params::default()
            },
            format: None,
            route: None,
            lookup: None,
        }
    }

    const MSK: Tz = chrono_tz::Europe::Moscow;

    fn after(s: u64) -> Delay {
        Delay {
            after_secs: Some(s),
            before_start_secs: None,
        }
    }

    fn before(s: u64) -> Delay {
        Delay {
            after_secs: None,
            before_start_secs: Some(s),
        }
    }

    #[test]
    fn a_delay_counts_from_the_event_not_from_its_arrival() {
        let e = event("2026-12-03T12:00:00Z", None);
        let d = after(3600);
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-03T12:00:05Z")),
            When::At(at("2026-12-03T13:00:00Z"))
        );
        // Taken again later (a restart, a redelivery): the same moment.
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-03T12:40:00Z")),
            When::At(at("2026-12-03T13:00:00Z"))
        );
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-03T13:00:00Z")),
            When::Now
        );
        // An old event replayed: due long ago, sent at once.
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-09T09:00:00Z")),
            When::Now
        );
        assert_eq!(
            when(&e, None, None, MSK, at("2026-12-03T12:00:05Z")),
            When::Now
        );
    }

    #[test]
    fn quiet_hours_hold_a_message_until_the_window_opens_in_the_events_zone() {
        let hours = SendHours::parse("10:00-21:00").unwrap();
        let e = event("2026-12-03T17:30:00Z", None); // 20:30 in Moscow
        let d = after(3600); // due 21:30 Moscow: quiet
        assert_eq!(
            when(&e, Some(&d), Some(&hours), MSK, at("2026-12-03T17:30:01Z")),
            When::At(at("2026-12-04T07:00:00Z")) // 10:00 Moscow next day
        );
        // Vladivostok (UTC+10): 17:30Z is 03:30 there; opens at 10:00 local = 00:00Z.
        let vvo = chrono_tz::Asia::Vladivostok;
        assert_eq!(
            when(&e, None, Some(&hours), vvo, at("2026-12-03T17:30:00Z")),
            When::At(at("2026-12-04T00:00:00Z"))
        );
        // Inside the window: now.
        assert_eq!(
            when(&e, None, Some(&hours), MSK, at("2026-12-03T08:00:00Z")),
            When::Now
        );
        // Before it opens the same day.
        assert_eq!(
            when(&e, None, Some(&hours), MSK, at("2026-12-03T05:59:00Z")),
            When::At(at("2026-12-03T07:00:00Z"))
        );
        // A window over midnight.
        let night = SendHours::parse("22:00-06:00").unwrap();
        assert_eq!(
            when(&e, None, Some(&night), MSK, at("2026-12-03T09:00:00Z")), // 12:00
            When::At(at("2026-12-03T19:00:00Z"))                           // 22:00 the same day
        );
        assert_eq!(
            when(&e, None, Some(&night), MSK, at("2026-12-03T23:00:00Z")),
            When::Now
        ); // 02:00
    }

    #[test]
    fn a_window_opening_in_a_daylight_saving_gap_opens_after_the_jump() {
        // Berlin, 2026-03-29: 02:00 jumps to 03:00.
        let berlin = chrono_tz::Europe::Berlin;
        let hours = SendHours::parse("02:30-05:00").unwrap();
        let e = event("2026-03-28T23:00:00Z", None); // 00:00 CET
        assert_eq!(
            when(&e, None, Some(&hours), berlin, at("2026-03-28T23:00:00Z")),
            When::At(at("2026-03-29T01:30:00Z")) // 03:30 CEST
        );
    }

    #[test]
    fn a_reminder_goes_before_the_start_or_not_at_all() {
        let e = event("2026-12-03T08:00:00Z", Some("2026-12-05T15:00:00+03:00"));
        let d = before(2 * 3600);
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-03T08:00:01Z")),
            When::At(at("2026-12-05T10:00:00Z"))
        );
        // Booked an hour before the start: at once.
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-05T11:00:00Z")),
            When::Now
        );
        // Started: expired.
        assert_eq!(
            when(&e, Some(&d), None, MSK, at("2026-12-05T12:00:00Z")),
            When::Expired {
                starts_at: at("2026-12-05T12:00:00Z")
            }
        );
        // Quiet hours would push it past the start: expired, not late.
        let hours = SendHours::parse("10:00-21:00").unwrap();
        let early = event("2026-12-03T08:00:00Z", Some("2026-12-05T09:00:00+03:00"));
        assert_eq!(
            when(
                &early,
                Some(&d),
                Some(&hours),
                MSK,
                at("2026-12-03T08:00:01Z")
            ),
            When::Expired {
                starts_at: at("2026-12-05T06:00:00Z")
            }
        );
        // No start time on the event: nothing to remind of, sent at once.
        let none = event("2026-12-03T08:00:00Z", None);
        assert_eq!(
            when(&none, Some(&d), None, MSK, at("2026-12-03T08:00:01Z")),
            When::Now
        );
    }
}
