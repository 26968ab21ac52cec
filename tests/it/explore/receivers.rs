//! What the webhook channel and the jobs' dead-man checks received, checked against the
//! database after the quiet phase: per channel, alerts in the order queued (an alert never
//! arrives before an older one it owed); per check, the last ping the check received
//! matches its job's last run; and the secret parts of their URLs are nowhere.

use std::path::Path;

use vps_snapshot_agent::db::Database;

use super::history::{HOOK_PATH, Model, ping_path};
use crate::helpers::Inbox;
use crate::receiver::Receiver;
use crate::store::raw;

pub async fn check(
    receivers: &Receiver,
    model: &Model,
    db: &Database,
    inbox: &Inbox,
    dir: &Path,
) -> Vec<String> {
    let mut bad = Vec::new();
    alerts_in_order(receivers, &mut bad);
    last_pings(receivers, model, db, &mut bad).await;
    let secrets: Vec<String> = std::iter::once(HOOK_PATH.to_string())
        .chain(model.jobs.iter().map(|j| ping_path(&j.name)))
        .collect();
    for secret in &secrets {
        let key = secret.rsplit('/').next().unwrap_or(secret);
        for f in crate::invariants::files_with_token(dir, key) {
            if !f.ends_with("config.toml") {
                bad.push(format!("a receiver's secret path is in {f}"));
            }
        }
        if inbox.messages().iter().any(|m| m.contains(key)) {
            bad.push(format!("a receiver's secret path ({key}) is in a mail"));
        }
        if receivers.all().iter().any(|g| g.body.contains(key)) {
            bad.push(format!(
                "a receiver's secret path ({key}) was sent to a receiver"
            ));
        }
    }
    bad
}

/// The ids of the alerts the webhook channel received, in the order received, each at
/// its first arrival (an alert sent again after a kill may arrive twice).
fn alerts_in_order(receivers: &Receiver, bad: &mut Vec<String>) {
    let mut first: Vec<i64> = Vec::new();
    for g in receivers.got(HOOK_PATH) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&g.body) else {
            bad.push(format!(
                "the webhook got a body that is not JSON: {}",
                g.body
            ));
            continue;
        };
        for a in v["alerts"].as_array().into_iter().flatten() {
            let id = a["id"].as_i64().unwrap_or_default();
            if !first.contains(&id) {
                first.push(id);
            }
        }
    }
    if first.windows(2).any(|w| w[0] > w[1]) {
        bad.push(format!(
            "the webhook channel received alerts out of the order queued: {first:?}"
        ));
    }
}

/// For every job of the final config: the pings its check received are, in order, those
/// the database says were sent (one sent again after a kill may arrive twice, so the sent
/// ones need only be a subsequence of those received), and the last one received is the
/// last one sent. A ping that expired unsent is a gap the check sees, as it should.
async fn last_pings(receivers: &Receiver, model: &Model, db: &Database, bad: &mut Vec<String>) {
    for job in &model.jobs {
        let check = ping_path(&job.name);
        let got: Vec<String> = receivers
            .got(&check)
            .iter()
            .map(|g| g.path.trim_start_matches(&check).to_string())
            .collect();
        let sent: Vec<String> = raw!(
            db,
            sqlx::query_scalar(
                "SELECT kind FROM pings WHERE job = $1 AND sent_at IS NOT NULL ORDER BY id"
            )
            .bind(&job.name),
            fetch_all
        )
        .unwrap();
        let sent: Vec<String> = sent
            .iter()
            .map(|k| match k.as_str() {
                "success" => String::new(),
                other => format!("/{other}"),
            })
            .collect();
        let mut rest = got.iter();
        let in_order = sent.iter().all(|s| rest.any(|g| g == s));
        if !in_order {
            bad.push(format!(
                "job {}: its check received {got:?}, but the pings were sent as {sent:?}",
                job.name
            ));
        } else if got.last() != sent.last() {
            bad.push(format!(
                "job {}: its check ended on {:?}, not on the last ping sent ({:?})",
                job.name,
                got.last(),
                sent.last()
            ));
        }
    }
}
