//! Rendering of the member table and history (pure functions of what the store returned).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use pgdaemon_core::events::Event;
use pgdaemon_core::{ClusterView, HistoryEntry, MemberStatus, Role};
use serde_json::json;

/// Wall-clock now in ms since the epoch (display only: liveness is never judged by it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS` UTC, for progress lines.
pub fn now_hms() -> String {
    let s = now_ms() / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

const MIB: f64 = 1024.0 * 1024.0;

/// One row of the member table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub member: String,
    pub host: String,
    pub role: String,
    pub state: String,
    pub timeline: String,
    pub lag_mb: String,
    pub tags: String,
    /// The member's agent version (from its heartbeat).
    pub version: String,
}

/// The rows, in member-name order. `now_ms` only ages heartbeats for display.
pub fn rows(view: &ClusterView, now_ms: u64) -> Vec<Row> {
    let record = view.cluster.as_ref();
    let lease_owner = view.leader.as_ref().filter(|l| !l.is_free()).map(|l| l.owner.as_str());
    let stale_ms = record.map_or(4_000, |r| (3 * r.config.probe_interval_ms).max(2 * r.config.renew_interval_ms));
    view.members
        .values()
        .map(|m| {
            let designated = record.and_then(|r| r.primary.as_deref()) == Some(m.name.as_str());
            let role = match m.role {
                Role::Primary if lease_owner == Some(m.name.as_str()) => "Leader",
                Role::Primary if designated => "Leader (no lease)",
                Role::Primary => "Primary (not designated)",
                Role::Replica if m.streaming => "Replica",
                Role::Replica => "Replica",
                Role::Unknown => "-",
            };
            let age = now_ms.saturating_sub(m.updated_at_ms);
            let mut state = state(m, age, stale_ms);
            if let Some(st) = view.states.get(&m.name) {
                if !st.pending_restart.is_empty() {
                    let _ = write!(state, ", pending restart ({})", st.pending_restart.join(", "));
                }
                if let Some(activity) = &st.activity {
                    let _ = write!(state, "; {activity}");
                }
            }
            let lag = match (m.role, m.lag_bytes) {
                (Role::Primary, _) => String::new(),
                (_, Some(b)) => format!("{:.1}", b as f64 / MIB),
                (Role::Replica, None) => "unknown".into(),
                (_, None) => String::new(),
            };
            let mut tags = Vec::new();
            if m.tags.nofailover {
                tags.push("nofailover".to_string());
            }
            if m.tags.priority != 0 {
                tags.push(format!("priority={}", m.tags.priority));
            }
            Row {
                member: m.name.clone(),
                host: if m.pg_host.is_empty() { "-".into() } else { format!("{}:{}", m.pg_host, m.pg_port) },
                role: role.into(),
                state,
                timeline: if m.timeline == 0 { "-".into() } else { m.timeline.to_string() },
                lag_mb: lag,
                tags: tags.join(","),
                version: if m.agent_version.is_empty() { "-".into() } else { m.agent_version.clone() },
            }
        })
        .chain(view.unreadable.iter().map(|u| Row {
            member: u.item.strip_prefix(pgdaemon_core::keys::MEMBER_PREFIX).unwrap_or(&u.item).to_string(),
            host: "-".into(),
            role: "unreadable record".into(),
            state: u.error.clone(),
            timeline: "-".into(),
            lag_mb: String::new(),
            tags: String::new(),
            version: "?".into(),
        }))
        .collect()
}

/// Agent versions by the members running them, when members run more than one (a rolling
/// upgrade in progress, or one left behind).
pub fn mixed_versions(view: &ClusterView) -> Option<String> {
    let mut by_version: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in view.members.values() {
        let v = if m.agent_version.is_empty() { "unknown" } else { m.agent_version.as_str() };
        by_version.entry(v).or_default().push(&m.name);
    }
    (by_version.len() > 1)
        .then(|| by_version.iter().map(|(v, names)| format!("{v} on {}", names.join(", "))).collect::<Vec<_>>().join("; "))
}

fn state(m: &MemberStatus, age_ms: u64, stale_ms: u64) -> String {
    let base = match (m.pg_running, m.role) {
        (false, _) => "stopped",
        (true, Role::Replica) if m.streaming => "streaming",
        (true, Role::Replica) => "running (not streaming)",
        (true, _) => "running",
    };
    if m.updated_at_ms > 0 && age_ms > stale_ms {
        format!("no heartbeat for {}s (last: {base})", age_ms / 1000)
    } else {
        base.to_string()
    }
}

/// The member table with a header line about the cluster, like `patronictl list`.
pub fn member_table(cluster: &str, view: &ClusterView, now_ms: u64) -> String {
    let mut s = String::new();
    match &view.cluster {
        None => {
            let _ = writeln!(s, "+ Cluster: {cluster} (no cluster record yet: not bootstrapped) +");
        }
        Some(r) => {
            let lease = match &view.leader {
                Some(l) if !l.is_free() => format!("lease {} (term {})", l.owner, l.term),
                Some(l) => format!("lease free (term {})", l.term),
                None => "no lease".into(),
            };
            let _ = writeln!(
                s,
                "+ Cluster: {cluster} | term {} | primary {} | {lease}{} +",
                r.term,
                r.primary.as_deref().unwrap_or("(none)"),
                if r.paused { " | PAUSED (no automatic failover)" } else { "" }
            );
            if let Some(t) = &r.transition {
                let _ = writeln!(
                    s,
                    "  {} in progress: {} -> {} (term {}, step {:?}, {:.1}s): {}",
                    t.kind,
                    t.old_primary.as_deref().unwrap_or("(none)"),
                    t.candidate,
                    t.term,
                    t.step,
                    now_ms.saturating_sub(t.started_ms) as f64 / 1000.0,
                    t.reason
                );
            }
            if let Some(q) = &r.request {
                let _ = writeln!(s, "  request pending: {:?} {} ({})", q.action, q.candidate.as_deref().unwrap_or(""), q.id);
            }
        }
    }
    let header = Row {
        member: "Member".into(),
        host: "Host".into(),
        role: "Role".into(),
        state: "State".into(),
        timeline: "TL".into(),
        lag_mb: "Lag in MB".into(),
        tags: "Tags".into(),
        version: "Version".into(),
    };
    let rows = rows(view, now_ms);
    let all: Vec<&Row> = std::iter::once(&header).chain(rows.iter()).collect();
    let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let widths = [
        w(|r| &r.member),
        w(|r| &r.host),
        w(|r| &r.role),
        w(|r| &r.state),
        w(|r| &r.timeline),
        w(|r| &r.lag_mb),
        w(|r| &r.tags),
        w(|r| &r.version),
    ];
    let line = |s: &mut String, r: &Row| {
        let cells = [&r.member, &r.host, &r.role, &r.state, &r.timeline, &r.lag_mb, &r.tags, &r.version];
        let mut text = String::from("|");
        for (c, width) in cells.iter().zip(widths) {
            let _ = write!(text, " {c:<width$} |");
        }
        let _ = writeln!(s, "{text}");
    };
    let sep: String = {
        let mut t = String::from("+");
        for width in widths {
            t.push_str(&"-".repeat(width + 2));
            t.push('+');
        }
        t
    };
    let _ = writeln!(s, "{sep}");
    line(&mut s, &header);
    let _ = writeln!(s, "{sep}");
    for r in &rows {
        line(&mut s, r);
    }
    let _ = writeln!(s, "{sep}");
    if rows.is_empty() {
        let _ = writeln!(s, "(no member has written a heartbeat)");
    }
    if let Some(mixed) = mixed_versions(view) {
        let _ = writeln!(s, "WARNING: mixed agent versions ({mixed}): finish the upgrade or roll back (docs/upgrading.md)");
    }
    for state in view.states.values().filter(|st| !st.parameter_errors.is_empty()) {
        let _ = writeln!(s, "WARNING: {}: cluster-wide parameters refused: {}", state.name, state.parameter_errors.join("; "));
    }
    for (name, a) in view.states.values().filter_map(|st| st.archive.as_ref().map(|a| (&st.name, a))) {
        if a.inactive {
            let _ = writeln!(s, "WARNING: {name}: not archiving as [archive] says: restart it (`pgdctl restart {name}`)");
        }
        if a.failing {
            let _ = writeln!(
                s,
                "WARNING: {name}: WAL archiving is failing at {} (last archived {}); WAL piles up in its pg_wal",
                a.last_failed_wal.as_deref().unwrap_or("?"),
                a.last_archived_wal.as_deref().unwrap_or("none")
            );
        }
    }
    if !view.unreadable.is_empty() {
        let _ = writeln!(
            s,
            "WARNING: {} unreadable record(s) skipped (they count as members without a heartbeat; docs/upgrading.md)",
            view.unreadable.len()
        );
    }
    s
}

/// `list --json`: the record, the lease and every heartbeat, as stored.
pub fn view_json(cluster: &str, view: &ClusterView) -> serde_json::Value {
    json!({
        "cluster": cluster,
        "record": view.cluster,
        "leader": view.leader,
        "members": view.members.values().collect::<Vec<_>>(),
        "states": view.states.values().collect::<Vec<_>>(),
        "parameters": view.parameters,
        "unreadable": view.unreadable,
    })
}

/// The history table, oldest first.
pub fn history_table(history: &[HistoryEntry]) -> String {
    let mut s = String::new();
    if history.is_empty() {
        s.push_str("no promotions recorded yet\n");
        return s;
    }
    let _ = writeln!(s, "{:>5}  {:<10}  {:<12}  {:<12}  {:<12}  {:>9}  reason", "term", "kind", "old", "new", "lsn", "took");
    for h in history {
        let _ = writeln!(
            s,
            "{:>5}  {:<10}  {:<12}  {:<12}  {:<12}  {:>8.2}s  {}",
            h.term,
            h.kind,
            h.old_primary.as_deref().unwrap_or("-"),
            h.new_primary,
            h.lsn.map_or("-".to_string(), |l| l.to_string()),
            h.finished_ms.saturating_sub(h.started_ms) as f64 / 1000.0,
            match &h.coordinator_version {
                Some(v) => format!("{} (coordinator {v})", h.reason),
                None => h.reason.clone(),
            }
        );
    }
    s
}

/// The event log, oldest first, with UTC times of day.
pub fn events_table(events: &[Event]) -> String {
    let mut s = String::new();
    if events.is_empty() {
        s.push_str("no events in this window\n");
        return s;
    }
    let _ = writeln!(s, "{:<8}  {:<20}  {:<12}  {:>5}  {:<11}  detail", "time", "event", "member", "term", "source");
    for e in events {
        let secs = e.time_ms / 1000;
        let _ = writeln!(
            s,
            "{:02}:{:02}:{:02}  {:<20}  {:<12}  {:>5}  {:<11}  {}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            e.kind.as_str(),
            e.member.as_deref().unwrap_or("-"),
            e.term,
            e.source,
            e.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaderLease, MemberTags};

    fn member(name: &str, role: Role, lag: Option<u64>) -> MemberStatus {
        let mut m = MemberStatus::new(name);
        m.role = role;
        m.pg_running = true;
        m.timeline = 2;
        m.lag_bytes = lag;
        m.streaming = role == Role::Replica;
        m.pg_host = "127.0.0.1".into();
        m.pg_port = 5433;
        m.updated_at_ms = 10_000;
        m
    }

    #[test]
    fn table_shows_leader_lag_tags_and_stale_members() {
        let mut view = ClusterView {
            cluster: Some(ClusterRecord::bootstrap("a", DynamicConfig::default())),
            leader: Some(LeaderLease { owner: "a".into(), term: 1, rvn: "r".into(), lease_ms: 10_000, released: false }),
            ..Default::default()
        };
        view.members.insert("a".into(), member("a", Role::Primary, None));
        let mut b = member("b", Role::Replica, Some(3 * 1024 * 1024 / 2));
        b.tags = MemberTags { nofailover: true, priority: 0 };
        view.members.insert("b".into(), b);
        let mut c = member("c", Role::Replica, None);
        c.pg_running = false;
        c.updated_at_ms = 1_000;
        view.members.insert("c".into(), c);
        let rows = rows(&view, 11_000);
        assert_eq!(rows[0].role, "Leader");
        assert_eq!(rows[0].lag_mb, "");
        assert_eq!(rows[1].lag_mb, "1.5");
        assert_eq!(rows[1].tags, "nofailover");
        assert_eq!(rows[1].state, "streaming");
        assert_eq!(rows[2].state, "no heartbeat for 10s (last: stopped)");
        let text = member_table("demo", &view, 11_000);
        assert!(text.contains("term 1 | primary a | lease a (term 1)"), "{text}");
        assert!(text.contains("| 127.0.0.1:5433 |"), "{text}");
    }

    #[test]
    fn table_shows_versions_mixed_version_warning_and_unreadable_records() {
        let mut view =
            ClusterView { cluster: Some(ClusterRecord::bootstrap("a", DynamicConfig::default())), ..Default::default() };
        for (name, version) in [("a", "0.1.0"), ("b", "0.1.0")] {
            let mut m = member(name, Role::Replica, Some(0));
            m.agent_version = version.into();
            view.members.insert(name.into(), m);
        }
        let text = member_table("demo", &view, 11_000);
        assert!(text.contains("| Version |") && text.contains("| 0.1.0   |"), "{text}");
        assert!(!text.contains("WARNING"), "one version, nothing unreadable: {text}");

        view.members.get_mut("b").unwrap().agent_version = "0.2.0".into();
        view.unreadable
            .push(pgdaemon_core::UnreadableItem { item: "member#zz".into(), error: "unknown variant `witness`".into() });
        let rows = rows(&view, 11_000);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].version, "0.2.0");
        assert_eq!((rows[2].member.as_str(), rows[2].role.as_str()), ("zz", "unreadable record"));
        assert_eq!(rows[2].state, "unknown variant `witness`");
        let text = member_table("demo", &view, 11_000);
        assert!(text.contains("| zz "), "{text}");
        assert!(text.contains("unreadable record"), "{text}");
        assert!(text.contains("WARNING: mixed agent versions (0.1.0 on a; 0.2.0 on b)"), "{text}");
        assert!(text.contains("WARNING: 1 unreadable record(s) skipped"), "{text}");
        assert_eq!(view_json("demo", &view)["unreadable"][0]["item"], "member#zz");
    }

    #[test]
    fn empty_history_says_so() {
        assert!(history_table(&[]).contains("no promotions"));
    }
}
