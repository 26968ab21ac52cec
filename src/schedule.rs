//! When jobs fire: cron expressions evaluated in each job's own time zone (DST-correct:
//! a local time that does not exist fires at the first valid time after it, one that occurs
//! twice fires once), and maintenance windows minus their lead. Pure functions of
//! (job, now), so they are tested across DST changes without waiting for one.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{JobSettings, Trigger};

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A job's next fire strictly after `now`: its cron time, or for a maintenance-window job
/// the next window that opens more than `lead` from now, minus `lead`.
pub fn next_fire(job: &JobSettings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(c) => c.next_after(now, job.timezone),
        Trigger::Window { window, lead } => {
            let lead = chrono_dur(*lead);
            window
                .next_after(now + lead, job.timezone)
                .map(|opens| opens - lead)
        }
    }
}

/// The latest fire at or before `now` (for catch-up), with the window it belongs to.
pub fn previous_fire(job: &JobSettings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(c) => c.previous_at_or_before(now, job.timezone),
        Trigger::Window { window, lead } => {
            let lead = chrono_dur(*lead);
            window
                .previous_at_or_before(now + lead, job.timezone)
                .map(|opens| opens - lead)
        }
    }
}

/// For a maintenance-window job, when the window a run prepares for opens: the fire it
/// was scheduled for plus `lead`, or for a run by hand the next window after its start.
pub fn window_for_run(
    job: &JobSettings,
    scheduled_for: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(_) => None,
        Trigger::Window { window, lead } => match scheduled_for {
            Some(fire) => Some(fire + chrono_dur(*lead)),
            None => window.next_after(started, job.timezone),
        },
    }
}

/// The next `n` fires after `now`.
pub fn upcoming(job: &JobSettings, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    // Parsed once for the n fires, if the settings dropped it.
    let job = &JobSettings {
        trigger: job.trigger.parsed(),
        ..job.clone()
    };
    let mut out = Vec::with_capacity(n);
    let mut t = now;
    while out.len() < n {
        match next_fire(job, t) {
            Some(next) => {
                out.push(next);
                t = next;
            }
            None => break,
        }
    }
    out
}

/// How long without a success before the job is stale: `stale_after`, else twice the
/// longest gap between its next few fires.
pub fn stale_after(job: &JobSettings, now: DateTime<Utc>) -> Duration {
    if let Some(d) = job.stale_after {
        return d;
    }
    let fires = upcoming(job, now, 8);
    let period = fires
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .and_then(|d| d.to_std().ok())
        .unwrap_or(Duration::from_secs(86_400));
    period * 2
}

/// When a job fires next and how long without a success makes it stale.
pub type Timing = (Option<DateTime<Utc>>, Duration);

/// Jobs' [`Timing`]s, worked out once per distinct schedule: configs repeat a few
/// expressions across many jobs, and croner's search (and, for settings that dropped
/// their parsed expressions, the parse) would otherwise be most of the time `status`,
/// a scrape or the status page take at a thousand jobs.
#[derive(Default)]
pub struct Timings(HashMap<String, Timing>);

impl Timings {
    /// A disabled job fires never.
    pub fn of(&mut self, job: &JobSettings, now: DateTime<Utc>) -> Timing {
        if !job.enabled {
            return (None, stale_after(job, now));
        }
        let key = match &job.trigger {
            Trigger::Schedule(c) => format!("s {c} {} {:?}", job.timezone, job.stale_after),
            Trigger::Window { window, lead } => {
                format!("w {window} {lead:?} {} {:?}", job.timezone, job.stale_after)
            }
        };
        *self.0.entry(key).or_insert_with(|| {
            let job = JobSettings {
                trigger: job.trigger.parsed(),
                ..job.clone()
            };
            (next_fire(&job, now), stale_after(&job, now))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Trigger;
    use crate::cron::CronSpec;
    use crate::retention::RetentionPolicy;
    use chrono::TimeZone;
    use chrono_tz::Tz;

    fn job(trigger: Trigger, tz: Tz) -> JobSettings {
        JobSettings {
            name: "j".into(),
            server_id: crate::domain::ServerId::new(1),
            trigger,
            timezone: tz,
            retention: RetentionPolicy {
                last: 1,
                ..RetentionPolicy::default()
            },
            poll_interval: Duration::from_secs(20),
            snapshot_timeout: Duration::from_secs(1800),
            catch_up: None,
            max_deletions_per_run: 3,
            stale_after: None,
            restore_safety_keep: Duration::from_secs(7 * 86_400),
            hooks: crate::hooks::Hooks::default(),
            ping_url: None,
            enabled: true,
        }
    }

    fn cron(expr: &str, tz: Tz) -> JobSettings {
        job(Trigger::Schedule(CronSpec::parse(expr).unwrap()), tz)
    }

    fn window(expr: &str, lead_mins: u64, tz: Tz) -> JobSettings {
        job(
            Trigger::Window {
                window: CronSpec::parse(expr).unwrap(),
                lead: Duration::from_secs(lead_mins * 60),
            },
            tz,
        )
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn fires(j: &JobSettings, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        upcoming(j, from, n)
    }

    #[test]
    fn berlin_spring_forward_fires_at_the_first_valid_time() {
        // 2027-03-28 02:30 does not exist in Berlin (02:00 CET -> 03:00 CEST).
        let j = cron("0 30 2 * * *", chrono_tz::Europe::Berlin);
        let got = fires(&j, utc(2027, 3, 26, 12, 0), 3);
        assert_eq!(
            got,
            vec![
                utc(2027, 3, 27, 1, 30),
                utc(2027, 3, 28, 1, 0),
                utc(2027, 3, 29, 0, 30)
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fires_once() {
        // 2027-10-31 02:30 happens twice in Berlin; fire once, at the first.
        let j = cron("0 30 2 * * *", chrono_tz::Europe::Berlin);
        let got = fires(&j, utc(2027, 10, 30, 12, 0), 2);
        assert_eq!(got, vec![utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]);
    }

    #[test]
    fn new_york_keeps_local_time_across_both_changes() {
        let j = cron("0 0 9 * * *", chrono_tz::America::New_York);
        // EST is UTC-5, EDT UTC-4; spring forward 2027-03-14, fall back 2027-11-07.
        assert_eq!(
            fires(&j, utc(2027, 3, 13, 15, 0), 2),
            vec![utc(2027, 3, 14, 13, 0), utc(2027, 3, 15, 13, 0)]
        );
        assert_eq!(
            fires(&j, utc(2027, 11, 6, 15, 0), 2),
            vec![utc(2027, 11, 7, 14, 0), utc(2027, 11, 8, 14, 0)]
        );
        // 02:30 does not exist on 2027-03-14 in New York.
        let j = cron("0 30 2 * * *", chrono_tz::America::New_York);
        assert_eq!(
            fires(&j, utc(2027, 3, 14, 0, 0), 1),
            vec![utc(2027, 3, 14, 7, 0)]
        );
    }

    #[test]
    fn leap_days_fire_only_in_leap_years() {
        let j = cron("0 0 12 29 2 *", Tz::UTC);
        assert_eq!(
            fires(&j, utc(2026, 11, 28, 0, 0), 2),
            vec![utc(2028, 2, 29, 12, 0), utc(2032, 2, 29, 12, 0)]
        );
    }

    #[test]
    fn a_window_lead_can_cross_midnight_and_a_week() {
        // Window Monday 00:15 UTC, lead 45 minutes: fire Sunday 23:30.
        let j = window("0 15 0 * * Mon", 45, Tz::UTC);
        assert_eq!(
            fires(&j, utc(2026, 11, 28, 0, 0), 2),
            vec![utc(2026, 11, 29, 23, 30), utc(2026, 12, 6, 23, 30)]
        );
        // A lead of 8 days: the window on Sunday Dec 6 fires on Saturday Nov 28.
        let j = window("0 0 4 * * Sun", 8 * 24 * 60, Tz::UTC);
        assert_eq!(
            fires(&j, utc(2026, 11, 28, 0, 0), 1),
            vec![utc(2026, 11, 28, 4, 0)]
        );
    }

    #[test]
    fn a_window_lead_across_a_dst_change_is_real_elapsed_time() {
        // Window 2027-03-28 04:00 CEST (02:00 UTC); 3 h before is 23:00 UTC the day before,
        // which is 00:00 CET local: lead counts real time, not wall-clock hours.
        let j = window("0 0 4 * * *", 180, chrono_tz::Europe::Berlin);
        assert_eq!(
            fires(&j, utc(2027, 3, 27, 12, 0), 1),
            vec![utc(2027, 3, 27, 23, 0)]
        );
        assert_eq!(
            window_for_run(&j, Some(utc(2027, 3, 27, 23, 0)), utc(2027, 3, 27, 23, 0)),
            Some(utc(2027, 3, 28, 2, 0))
        );
    }

    #[test]
    fn fires_are_whole_seconds_even_from_a_fractional_now() {
        let j = cron("0 * * * * *", Tz::UTC);
        let late = utc(2026, 11, 28, 0, 4) + chrono::Duration::milliseconds(3);
        assert_eq!(next_fire(&j, late), Some(utc(2026, 11, 28, 0, 5)));
        let early = utc(2026, 11, 28, 0, 4) - chrono::Duration::milliseconds(3);
        assert_eq!(next_fire(&j, early), Some(utc(2026, 11, 28, 0, 4)));
    }

    #[test]
    fn previous_fire_and_stale_period() {
        let j = cron("0 30 2 * * *", Tz::UTC);
        assert_eq!(
            previous_fire(&j, utc(2026, 11, 28, 3, 0)),
            Some(utc(2026, 11, 28, 2, 30))
        );
        assert_eq!(
            previous_fire(&j, utc(2026, 11, 28, 2, 30)),
            Some(utc(2026, 11, 28, 2, 30))
        );
        assert_eq!(
            stale_after(&j, utc(2026, 11, 28, 3, 0)),
            Duration::from_secs(2 * 86_400)
        );
    }
}
