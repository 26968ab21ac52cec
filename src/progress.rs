//! `run-once` on a terminal: one live line per running job (its last step, polls and
//! elapsed time) drawn by indicatif, fed by the same tracing events the log lines are
//! made of. Warnings and errors, and what happens outside a run, still print as lines
//! above the live ones. Off a terminal, with `-q` or `--log-format json`, the plain log
//! is used instead ([`crate::logging`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The job a `run` span is for.
struct JobName(String);

pub struct ProgressLayer {
    multi: MultiProgress,
    bars: Mutex<HashMap<u64, ProgressBar>>,
    style: ProgressStyle,
}

impl ProgressLayer {
    pub fn new() -> Self {
        let style =
            ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        Self {
            multi: MultiProgress::new(),
            bars: Mutex::default(),
            style,
        }
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProgressBar>> {
        self.bars.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ProgressLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// An event's message and its other fields, `key=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
    job: Option<String>,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "job" => self.job = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "job" => self.job = Some(value.to_string()),
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }
}

impl<S> Layer<S> for ProgressLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "run" {
            return;
        }
        let mut line = Line::default();
        attrs.record(&mut line);
        let (Some(job), Some(span)) = (line.job, ctx.span(id)) else {
            return;
        };
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(self.style.clone());
        bar.set_prefix(job.clone());
        bar.set_message("starting");
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bars().insert(id.into_u64(), bar);
        span.extensions_mut().insert(JobName(job));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let text = format!("{}{}", line.message, line.fields);
        let level = *event.metadata().level();
        let run = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find(|s| s.extensions().get::<JobName>().is_some())
                .map(|s| {
                    (
                        s.id().into_u64(),
                        s.extensions().get::<JobName>().map(|j| j.0.clone()),
                    )
                })
        });
        match run {
            Some((id, job)) => {
                if let Some(bar) = self.bars().get(&id) {
                    bar.set_message(text.clone());
                }
                if level <= Level::WARN {
                    let job = job.unwrap_or_default();
                    let _ = self
                        .multi
                        .println(crate::secrets::scrub(&format!("{level} {job}: {text}")));
                }
            }
            None if level <= Level::INFO => {
                let _ = self
                    .multi
                    .println(crate::secrets::scrub(&format!("{level} {text}")));
            }
            None => {}
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(bar) = self.bars().remove(&id.into_u64()) {
            bar.finish_and_clear();
        }
    }
}
