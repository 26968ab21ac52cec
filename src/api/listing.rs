//! A listing as the agent trusts it. The API's pages are read item by item: a snapshot
//! listed twice (a paging glitch) is one snapshot, an item of another server in a
//! server's listing is not on that server, and an item that cannot be read (no id, no
//! usable `created_at`) is still a snapshot that takes a slot. Whatever was odd is kept
//! as an anomaly, and a listing with any is never a reason to delete.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::Snapshot;
use crate::domain::{ServerId, SnapshotId};

/// How far in the future a `created_at` may be (clocks differ) before it is an anomaly.
const FUTURE_SLACK: chrono::Duration = chrono::Duration::hours(1);

/// A server's (or every server's) snapshots, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Distinct snapshots, in the order first listed.
    pub snapshots: Vec<Snapshot>,
    /// What was odd about the listing, in words; empty for a consistent one.
    pub anomalies: Vec<String>,
    /// Items that could not be read: snapshots the server holds, counted toward its limit.
    pub unreadable: usize,
    /// The names of those items, where they had one.
    pub unreadable_names: Vec<String>,
    /// Snapshots an anomaly was about (listed twice, or sharing a name with another):
    /// what the listing says of them is not to be trusted.
    pub doubted: HashSet<SnapshotId>,
}

impl Listing {
    /// A listing of exactly `snapshots`, nothing odd.
    pub fn of(snapshots: Vec<Snapshot>) -> Self {
        Self {
            snapshots,
            ..Self::default()
        }
    }

    /// Nothing odd: a listing deletions may be based on.
    pub fn consistent(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// How many snapshots the server holds by this listing: the distinct ones and those
    /// that could not be read.
    pub fn held(&self) -> usize {
        self.snapshots.len() + self.unreadable
    }

    /// The anomalies as one line, for a run's warning or error.
    pub fn odd(&self) -> String {
        self.anomalies.join("; ")
    }

    /// The snapshot `id`, if listed.
    pub fn get(&self, id: SnapshotId) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.id == id)
    }

    /// Whether an anomaly of this listing was about snapshot `id`.
    pub fn doubts(&self, id: SnapshotId) -> bool {
        self.doubted.contains(&id)
    }
}

/// Reads the items of a listing's pages into a [`Listing`]: of server `server` (when the
/// listing was filtered by it), as of `now`.
#[derive(Debug)]
pub struct Reader {
    server: Option<ServerId>,
    now: DateTime<Utc>,
    seen: HashSet<SnapshotId>,
    /// Each name listed so far, and the snapshot that bore it first.
    names: std::collections::HashMap<String, SnapshotId>,
    out: Listing,
}

impl Reader {
    pub fn new(server: Option<ServerId>, now: DateTime<Utc>) -> Self {
        Self {
            server,
            now,
            seen: HashSet::new(),
            names: std::collections::HashMap::new(),
            out: Listing::default(),
        }
    }

    fn odd(&mut self, what: String) {
        if !self.out.anomalies.contains(&what) {
            tracing::warn!("API anomaly: {what}");
            self.out.anomalies.push(what);
        }
    }

    /// One item of a page.
    pub fn item(&mut self, item: serde_json::Value) {
        // An id as the API wrote it: a number beyond 64 bits reads as a float here, so it
        // is named as such rather than by a rounded value.
        let id = match item.get("id") {
            Some(serde_json::Value::Number(n)) if n.as_u64().is_none() => {
                Some("with an id that is not a 64-bit whole number".to_string())
            }
            Some(v) => Some(v.to_string()),
            None => None,
        };
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let snap: Snapshot = match serde_json::from_value(item) {
            Ok(s) => s,
            Err(e) => {
                self.out.unreadable += 1;
                self.out.unreadable_names.extend(name);
                let which = id.map_or_else(|| "an item".to_string(), |id| format!("item {id}"));
                return self.odd(format!("{which} could not be read ({e})"));
            }
        };
        if let Some(server) = self.server
            && snap.server.id != server
        {
            return self.odd(format!(
                "snapshot {} of server {} was in the listing of server {server}",
                snap.id, snap.server.id
            ));
        }
        if !self.seen.insert(snap.id) {
            self.out.doubted.insert(snap.id);
            return self.odd(format!("snapshot {} was listed twice", snap.id));
        }
        // The agent names each snapshot once: two of one of its names are a copy, and which
        // one is the agent's cannot be told from the listing. (People may give several
        // snapshots one name of their own.)
        if crate::snapshot::naming::parse(&snap.name).is_some()
            && let Some(first) = self.names.insert(snap.name.clone(), snap.id)
        {
            self.out.doubted.extend([first, snap.id]);
            self.odd(format!(
                "snapshots {first} and {} are both named {}",
                snap.id, snap.name
            ));
        }
        if snap.created_at > self.now + FUTURE_SLACK {
            self.odd(format!(
                "snapshot {} was created in the future ({})",
                snap.id,
                snap.created_at.to_rfc3339()
            ));
        }
        self.out.snapshots.push(snap);
    }

    pub fn finish(self) -> Listing {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(id: u64, server: u64, created_at: &str) -> serde_json::Value {
        json!({"id": id, "server": {"id": server}, "name": format!("s{id}"),
               "status": "completed", "created_at": created_at})
    }

    #[test]
    fn duplicates_strangers_and_unreadable_items_are_anomalies_counted_as_the_server_holds_them() {
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut r = Reader::new(Some(ServerId::new(7)), now);
        for i in [
            item(1, 7, "2026-11-30T00:00:00Z"),
            item(2, 7, "2026-11-30T01:00:00Z"),
            item(1, 7, "2026-11-30T00:00:00Z"),
            item(3, 8, "2026-11-30T02:00:00Z"),
            item(4, 7, "yesterday"),
            item(5, 7, "2027-01-01T00:00:00Z"),
        ] {
            r.item(i);
        }
        let l = r.finish();
        let ids: Vec<u64> = l.snapshots.iter().map(|s| s.id.get()).collect();
        assert_eq!(ids, [1, 2, 5]);
        assert_eq!(l.unreadable, 1);
        assert_eq!(l.unreadable_names, ["s4"]);
        assert!(l.doubts(SnapshotId::new(1)) && !l.doubts(SnapshotId::new(2)));
        assert_eq!(l.held(), 4);
        assert!(!l.consistent());
        let odd = l.odd();
        for part in [
            "snapshot 1 was listed twice",
            "snapshot 3 of server 8",
            "item 4 could not be read",
            "snapshot 5 was created in the future",
        ] {
            assert!(odd.contains(part), "{odd}");
        }
    }

    #[test]
    fn two_snapshots_of_one_name_are_both_doubted_and_an_id_beyond_64_bits_is_named_so() {
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut r = Reader::new(None, now);
        let name = "agent-web-20261130T000000Z-a1b2c3";
        let mut original = item(1, 7, "2026-11-30T00:00:00Z");
        original["name"] = json!(name);
        let mut copy = item(2, 7, "2026-11-30T00:00:00Z");
        copy["name"] = json!(name);
        r.item(original);
        r.item(copy);
        // Two of one name of a person's own: nothing odd.
        let mut hand = item(4, 7, "2026-11-30T00:00:00Z");
        hand["name"] = json!("before-upgrade");
        let mut hand2 = item(5, 7, "2026-11-30T00:00:00Z");
        hand2["name"] = json!("before-upgrade");
        r.item(hand);
        r.item(hand2);
        let mut huge = item(3, 7, "2026-11-30T00:00:00Z");
        huge["id"] = serde_json::from_str("18446744073709551616").unwrap();
        r.item(huge);
        let l = r.finish();
        assert!(l.doubts(SnapshotId::new(1)) && l.doubts(SnapshotId::new(2)));
        assert!(!l.doubts(SnapshotId::new(4)) && !l.doubts(SnapshotId::new(5)));
        assert!(
            l.odd()
                .contains(&format!("snapshots 1 and 2 are both named {name}")),
            "{}",
            l.odd()
        );
        assert!(
            l.odd()
                .contains("item with an id that is not a 64-bit whole number"),
            "{}",
            l.odd()
        );
    }

    #[test]
    fn ids_above_two_to_the_63_are_read_like_any_other() {
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut r = Reader::new(None, now);
        r.item(item(u64::MAX, 7, "2026-11-30T00:00:00Z"));
        let l = r.finish();
        assert!(l.consistent());
        assert_eq!(l.snapshots[0].id.get(), u64::MAX);
    }
}
