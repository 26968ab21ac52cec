//! Cron expressions: six fields, seconds first (five are read with seconds 0), evaluated
//! in a time zone. Pure: no config, no clock.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A cron expression, validated: 6 fields (seconds first) or 5 (seconds taken as 0). A
/// parsed expression is about 5 KiB (croner keeps a byte per possible year): copies share
/// it, and a long-running process may drop it ([`CronSpec::compact`]) to parse it again
/// (about 25 µs) when it next needs it.
#[derive(Clone)]
pub struct CronSpec {
    expr: String,
    cron: Option<Arc<Cron>>,
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSpec({:?})", self.expr)
    }
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl CronSpec {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{expr:?} has {fields} fields; expected 6 (sec min hour day-of-month month \
                 day-of-week) or 5 (seconds taken as 0)"
            ));
        }
        let cron = parser().parse(expr).map_err(|e| match out_of_range(expr) {
            Some(why) => format!("{expr:?} is not a valid cron expression: {why}"),
            None => format!("{expr:?} is not a valid cron expression: {e}"),
        })?;
        let spec = Self {
            expr: expr.trim().to_string(),
            cron: Some(Arc::new(cron)),
        };
        // An expression that never fires (Feb 30th) is a mistake, not a schedule.
        let probe = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if spec.next_after(probe, Tz::UTC).is_none() {
            return Err(format!("{expr:?} never fires"));
        }
        Ok(spec)
    }

    /// The parsed expression: the one kept, or parsed anew after [`CronSpec::compact`].
    fn cron(&self) -> Option<Arc<Cron>> {
        match &self.cron {
            Some(c) => Some(c.clone()),
            None => parser().parse(&self.expr).ok().map(Arc::new),
        }
    }

    /// This expression with its parsed form in hand, for several evaluations in a row.
    pub fn parsed(&self) -> Self {
        Self {
            expr: self.expr.clone(),
            cron: self.cron(),
        }
    }

    /// Drops the parsed form; it is parsed again when next needed.
    pub fn compact(&mut self) {
        self.cron = None;
    }

    /// The first fire strictly after `after`, evaluated in `tz`. Whole seconds: croner
    /// carries a start time's fraction into its answer.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron()?
            .find_next_occurrence(&whole_seconds(after).with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire at or before `at`, evaluated in `tz`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron()?
            .find_previous_occurrence(&whole_seconds(at).with_timezone(&tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

/// The fields of a six-field expression, with the values each allows.
const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// The first number outside its field's range, said in words: croner only says "Number
/// out of bounds", which leaves the user to count fields.
fn out_of_range(expr: &str) -> Option<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let skip = FIELDS.len().checked_sub(fields.len())?;
    for (field, &(name, min, max)) in fields.iter().zip(&FIELDS[skip..]) {
        for part in field.split(',') {
            let (range, step) = part.split_once('/').unwrap_or((part, ""));
            if step == "0" {
                return Some(format!("{name} step 0 is not allowed"));
            }
            let range = range.split('#').next().unwrap_or(range);
            for n in range
                .split('-')
                .filter_map(|v| v.trim_end_matches('W').parse::<u32>().ok())
            {
                if !(min..=max).contains(&n) {
                    return Some(format!("{name} {n} is out of range ({min}-{max})"));
                }
            }
        }
    }
    None
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}
