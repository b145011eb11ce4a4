//! How `berth csi` shows replies: each reply becomes a JSON document named after the CSI
//! fields (snake_case, enums by their proto names), printed as is with `--output json`,
//! or as aligned `key: value` lines and tables for people. Values of sensitive map keys
//! (tokens, passwords, keys) are shown as `<redacted>`, whoever sent them.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::csi::{is_sensitive_key, pb};

/// A reply: its JSON document and, for lists, a table people read more easily.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub json: Value,
    pub table: Option<Table>,
}

impl From<Value> for Reply {
    fn from(json: Value) -> Reply {
        Reply { json, table: None }
    }
}

/// Rows under a header, printed in aligned columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
            let _ = writeln!(out, "{}", text.join("  ").trim_end());
        };
        line(self.header.clone(), &mut out);
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        out
    }
}

/// A byte count for people: `1073741824 (1Gi)`.
fn bytes(n: i64) -> String {
    match u64::try_from(n) {
        Ok(b) if b >= 1024 => {
            const UNITS: [(&str, u64); 5] =
                [("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
            let (suffix, size) = UNITS.iter().find(|(_, s)| b >= *s).copied().unwrap_or(("Ki", 1 << 10));
            let value = b as f64 / size as f64;
            if b % size == 0 { format!("{b} ({}{suffix})", b / size) } else { format!("{b} ({value:.1}{suffix})") }
        }
        _ => n.to_string(),
    }
}

/// Prints a reply for people: the table if there is one, else the document as indented
/// `key: value` lines (keys ending in `bytes` also in binary units).
pub fn human(reply: &Reply) -> String {
    if let Some(table) = &reply.table {
        let mut out = table.render();
        if let Some(token) = reply.json.get("next_token").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            let _ = writeln!(out, "next_token: {token}");
        }
        return out;
    }
    let mut out = String::new();
    match &reply.json {
        Value::Object(map) if map.is_empty() => out.push_str("ok\n"),
        Value::Object(map) => object(map, 0, &mut out),
        other => {
            let _ = writeln!(out, "{}", scalar(other));
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn object(map: &Map<String, Value>, indent: usize, out: &mut String) {
    let width = map.keys().map(String::len).max().unwrap_or(0) + 1;
    for (key, value) in map {
        let label = format!("{key}:");
        match value {
            Value::Object(inner) if inner.is_empty() => {
                let _ = writeln!(out, "{:indent$}{label:width$} -", "");
            }
            Value::Object(inner) => {
                let _ = writeln!(out, "{:indent$}{label}", "");
                object(inner, indent + 2, out);
            }
            Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                let text = if items.is_empty() {
                    "-".to_string()
                } else {
                    items.iter().map(scalar).collect::<Vec<_>>().join(", ")
                };
                let _ = writeln!(out, "{:indent$}{label:width$} {text}", "");
            }
            Value::Array(items) => {
                let _ = writeln!(out, "{:indent$}{label}", "");
                for item in items {
                    match item {
                        Value::Object(inner) => {
                            let mut block = String::new();
                            object(inner, 0, &mut block);
                            for (i, line) in block.lines().enumerate() {
                                let marker = if i == 0 { "- " } else { "  " };
                                let _ = writeln!(out, "{:w$}{marker}{line}", "", w = indent + 2);
                            }
                        }
                        other => {
                            let _ = writeln!(out, "{:w$}- {}", "", scalar(other), w = indent + 2);
                        }
                    }
                }
            }
            Value::Number(n) if key.ends_with("bytes") => {
                let text = n.as_i64().map_or_else(|| n.to_string(), bytes);
                let _ = writeln!(out, "{:indent$}{label:width$} {text}", "");
            }
            other => {
                let _ = writeln!(out, "{:indent$}{label:width$} {}", "", scalar(other));
            }
        }
    }
}

/// A string map, sorted, with sensitive values hidden.
#[must_use]
pub fn map(m: &HashMap<String, String>) -> Value {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| {
                let v = if is_sensitive_key(k) { "<redacted>".to_string() } else { m[k].clone() };
                (k.clone(), Value::String(v))
            })
            .collect(),
    )
}

fn topology(t: &pb::Topology) -> Value {
    map(&t.segments)
}

/// A volume.
pub fn volume(v: &pb::Volume) -> Value {
    use pb::volume_content_source::Type;
    let source = match v.content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
        Some(Type::Snapshot(s)) => json!({ "snapshot_id": s.snapshot_id }),
        Some(Type::Volume(s)) => json!({ "volume_id": s.volume_id }),
        None => Value::Null,
    };
    json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": map(&v.volume_context),
        "content_source": source,
        "accessible_topology": v.accessible_topology.iter().map(topology).collect::<Vec<_>>(),
    })
}

/// A volume's condition.
#[must_use]
pub fn condition(c: Option<&pb::VolumeCondition>) -> Value {
    c.map_or(Value::Null, |c| json!({ "abnormal": c.abnormal, "message": c.message }))
}

/// A snapshot; the creation time in RFC 3339.
pub fn snapshot(s: &pb::Snapshot) -> Value {
    json!({
        "snapshot_id": s.snapshot_id,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "creation_time": s.creation_time.as_ref().map(ToString::to_string),
        "ready_to_use": s.ready_to_use,
        "group_snapshot_id": s.group_snapshot_id,
    })
}

/// A capability as a name (enums by their proto names; unknown numbers as numbers).
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> Value {
    E::try_from(value).map_or_else(|_| json!(value), |e| json!(name(e)))
}

/// Plugin capabilities: services and volume expansion.
#[must_use]
pub fn plugin_capabilities(r: &pb::GetPluginCapabilitiesResponse) -> Value {
    use pb::plugin_capability::{Type, service, volume_expansion};
    let mut services = Vec::new();
    let mut expansion = Vec::new();
    for c in &r.capabilities {
        match &c.r#type {
            Some(Type::Service(s)) => services.push(enum_name(s.r#type, |t: service::Type| t.as_str_name())),
            Some(Type::VolumeExpansion(e)) => {
                expansion.push(enum_name(e.r#type, |t: volume_expansion::Type| t.as_str_name()));
            }
            None => {}
        }
    }
    json!({ "services": services, "volume_expansion": expansion })
}

/// Controller capabilities by RPC name.
#[must_use]
pub fn controller_capabilities(r: &pb::ControllerGetCapabilitiesResponse) -> Value {
    use pb::controller_service_capability::{Type, rpc};
    let rpcs: Vec<Value> = r
        .capabilities
        .iter()
        .filter_map(|c| c.r#type.as_ref().map(|Type::Rpc(r)| enum_name(r.r#type, |t: rpc::Type| t.as_str_name())))
        .collect();
    json!({ "capabilities": rpcs })
}

/// Node capabilities by RPC name.
#[must_use]
pub fn node_capabilities(r: &pb::NodeGetCapabilitiesResponse) -> Value {
    use pb::node_service_capability::{Type, rpc};
    let rpcs: Vec<Value> = r
        .capabilities
        .iter()
        .filter_map(|c| c.r#type.as_ref().map(|Type::Rpc(r)| enum_name(r.r#type, |t: rpc::Type| t.as_str_name())))
        .collect();
    json!({ "capabilities": rpcs })
}

/// A capability the plugin confirmed.
#[must_use]
pub fn capability(c: &pb::VolumeCapability) -> Value {
    use pb::volume_capability::{AccessType, access_mode::Mode};
    let mode = c.access_mode.map_or(Value::Null, |m| enum_name(m.mode, |t: Mode| t.as_str_name()));
    match &c.access_type {
        Some(AccessType::Block(_)) => json!({ "access_type": "block", "access_mode": mode }),
        Some(AccessType::Mount(m)) => json!({
            "access_type": "mount",
            "access_mode": mode,
            "fs_type": m.fs_type,
            "mount_flags": m.mount_flags,
        }),
        None => json!({ "access_type": null, "access_mode": mode }),
    }
}

/// Volume stats: usage per unit and condition; a table for people.
#[must_use]
pub fn stats(r: &pb::NodeGetVolumeStatsResponse) -> Reply {
    use pb::volume_usage::Unit;
    let usage: Vec<Value> = r
        .usage
        .iter()
        .map(|u| {
            json!({
                "unit": enum_name(u.unit, |t: Unit| t.as_str_name()),
                "total": u.total,
                "used": u.used,
                "available": u.available,
            })
        })
        .collect();
    let rows = r
        .usage
        .iter()
        .map(|u| {
            let bytes_unit = u.unit == Unit::Bytes as i32;
            let fmt = |n: i64| if bytes_unit { bytes(n) } else { n.to_string() };
            vec![
                Unit::try_from(u.unit).map_or_else(|_| u.unit.to_string(), |t| t.as_str_name().to_string()),
                fmt(u.total),
                fmt(u.used),
                fmt(u.available),
            ]
        })
        .collect();
    let mut table = Table { header: vec!["UNIT", "TOTAL", "USED", "AVAILABLE"], rows };
    if let Some(c) = &r.volume_condition {
        let state = if c.abnormal { "ABNORMAL" } else { "healthy" };
        table.rows.push(vec![format!("condition: {state}: {}", c.message)]);
    }
    Reply {
        json: json!({ "usage": usage, "volume_condition": condition(r.volume_condition.as_ref()) }),
        table: Some(table),
    }
}

/// A page (or several) of volumes; a table for people.
#[must_use]
pub fn volumes(entries: &[pb::list_volumes_response::Entry], next_token: &str) -> Reply {
    let mut docs = Vec::new();
    let mut rows = Vec::new();
    for e in entries {
        let v = e.volume.clone().unwrap_or_default();
        let status = e.status.clone().unwrap_or_default();
        let health = match &status.volume_condition {
            Some(c) if c.abnormal => format!("abnormal: {}", c.message),
            Some(_) => "healthy".into(),
            None => "-".into(),
        };
        let nodes = if status.published_node_ids.is_empty() { "-".into() } else { status.published_node_ids.join(",") };
        rows.push(vec![v.volume_id.clone(), bytes(v.capacity_bytes), nodes, health]);
        docs.push(json!({
            "volume": volume(&v),
            "status": {
                "published_node_ids": status.published_node_ids,
                "volume_condition": condition(status.volume_condition.as_ref()),
            },
        }));
    }
    Reply {
        json: json!({ "entries": docs, "next_token": next_token }),
        table: Some(Table { header: vec!["VOLUME ID", "CAPACITY", "PUBLISHED TO", "CONDITION"], rows }),
    }
}

/// A page (or several) of snapshots; a table for people.
#[must_use]
pub fn snapshots(entries: &[pb::list_snapshots_response::Entry], next_token: &str) -> Reply {
    let list: Vec<pb::Snapshot> = entries.iter().filter_map(|e| e.snapshot.clone()).collect();
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.snapshot_id.clone(),
                s.source_volume_id.clone(),
                bytes(s.size_bytes),
                s.ready_to_use.to_string(),
                s.creation_time.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
            ]
        })
        .collect();
    Reply {
        json: json!({
            "entries": list.iter().map(|s| json!({ "snapshot": snapshot(s) })).collect::<Vec<_>>(),
            "next_token": next_token,
        }),
        table: Some(Table { header: vec!["SNAPSHOT ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"], rows }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(1 << 30), "1073741824 (1Gi)");
        assert_eq!(bytes(1536), "1536 (1.5Ki)");
        assert_eq!(bytes(100), "100");
        assert_eq!(bytes(-1), "-1");
    }

    #[test]
    fn human_output_aligns_keys_and_nests() {
        let reply = Reply::from(json!({
            "volume": {
                "volume_id": "vol:a:1",
                "capacity_bytes": 1 << 20,
                "volume_context": { "pool": "a" },
                "content_source": null,
                "accessible_topology": [{ "zone": "z1" }],
            }
        }));
        let text = human(&reply);
        let want = "\
volume:
  volume_id:           vol:a:1
  capacity_bytes:      1048576 (1Mi)
  volume_context:
    pool: a
  content_source:      -
  accessible_topology:
    - zone: z1
";
        assert_eq!(text, want);
        assert_eq!(human(&Reply::from(json!({}))), "ok\n");
    }

    #[test]
    fn sensitive_map_values_are_redacted() {
        let m = HashMap::from([
            ("csi.storage.k8s.io/serviceAccount.tokens".to_string(), "TOKEN".to_string()),
            ("pool".to_string(), "fast".to_string()),
        ]);
        let v = map(&m);
        assert_eq!(v["pool"], "fast");
        assert_eq!(v["csi.storage.k8s.io/serviceAccount.tokens"], "<redacted>");
    }

    #[test]
    fn lists_render_as_tables_with_the_next_token() {
        let entry = pb::list_volumes_response::Entry {
            volume: Some(pb::Volume { volume_id: "vol:a:1".into(), capacity_bytes: 1 << 30, ..Default::default() }),
            status: Some(pb::list_volumes_response::VolumeStatus {
                published_node_ids: vec!["n1".into()],
                volume_condition: Some(pb::VolumeCondition { abnormal: false, message: "ok".into() }),
            }),
        };
        let reply = volumes(&[entry], "tok");
        let text = human(&reply);
        assert_eq!(
            text,
            "VOLUME ID  CAPACITY          PUBLISHED TO  CONDITION\nvol:a:1    1073741824 (1Gi)  n1            healthy\nnext_token: tok\n"
        );
        assert_eq!(reply.json["entries"][0]["volume"]["volume_id"], "vol:a:1");
        assert_eq!(reply.json["next_token"], "tok");
    }

    #[test]
    fn snapshot_times_are_rfc3339() {
        let s = pb::Snapshot {
            snapshot_id: "s".into(),
            creation_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(snapshot(&s)["creation_time"], "2023-11-14T22:13:20Z");
    }
}
