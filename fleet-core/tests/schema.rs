//! The JSON Schemas under `schema/` at the repository root are generated
//! from the wire types in `fleet_core::protocol`; this test regenerates them
//! and fails when a committed file differs, so a client written against the
//! schemas cannot drift from the code.
//!
//! After changing a wire type, regenerate and commit the files:
//!
//! ```text
//! FLEET_BLESS_SCHEMA=1 cargo test -p fleet-core --all-features --test schema
//! ```
//!
//! A new top-level message gets one line in [`WIRE`].
#![cfg(feature = "schema")]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use fleet_core::protocol::{
    AgentMsg, AgentRefusal, BootstrapRecord, ClaimMsg, ClaimReply, CredentialsBundle, DaemonMsg,
    Discovery, ExecFrame, FleetRecord, FollowerRecord, JobMsg, JobReply, LeaderRecord,
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION, QueueClaim, QueueRecord, Record, SealedCredentials,
    WsClientFrame, WsServerFrame,
};
use fleet_core::protocol::{
    ApiErrorBody, ArtifactInfo, CostReport, Diagnosis, Escalation, LeaderInfo, NewToken,
    NewTokenRequest, NodeStatus, PagerDutyEvent, PoolInfo, ReplayStatus, RunInfo, RunSpec,
    SshHostRecord, StatusSummary,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

/// How a message travels.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Inside the versioned envelope `{"v": 1, "msg": …}` written by
    /// `protocol::encode` and read by `protocol::decode`.
    Envelope,
    /// Plain JSON (a file, the plaintext of a sealed bundle, a field of
    /// another message).
    Plain,
}

use Framing::{Envelope, Plain};

/// Generates a type's root schema: `schema_of::<T>`.
type Generate = fn() -> Schema;

/// Every top-level wire message: the file under `schema/`, how it travels,
/// and the type it is generated from. One line per type.
#[rustfmt::skip]
const WIRE: &[(&str, Framing, Generate)] = &[
    ("claim-msg.json",          Envelope, schema_of::<ClaimMsg>),
    ("claim-reply.json",        Envelope, schema_of::<ClaimReply>),
    ("agent-msg.json",          Envelope, schema_of::<AgentMsg>),
    ("daemon-msg.json",         Envelope, schema_of::<DaemonMsg>),
    ("job-msg.json",            Envelope, schema_of::<JobMsg>),
    ("job-reply.json",          Envelope, schema_of::<JobReply>),
    ("sealed-credentials.json", Plain,    schema_of::<SealedCredentials>),
    ("credentials-bundle.json", Plain,    schema_of::<CredentialsBundle>),
    ("discovery.json",          Plain,    schema_of::<Discovery>),
    ("record.json",             Envelope, schema_of::<Record>),
    ("leader-record.json",      Envelope, schema_of::<LeaderRecord>),
    ("follower-record.json",    Envelope, schema_of::<FollowerRecord>),
    ("fleet-record.json",       Envelope, schema_of::<FleetRecord>),
    ("bootstrap-record.json",   Envelope, schema_of::<BootstrapRecord>),
    ("queue-claim.json",        Envelope, schema_of::<QueueClaim>),
    ("queue-record.json",       Envelope, schema_of::<QueueRecord>),
    ("exec-frame.json",         Plain,    schema_of::<ExecFrame>),
    ("ws-client-frame.json",    Envelope, schema_of::<WsClientFrame>),
    ("ws-server-frame.json",    Envelope, schema_of::<WsServerFrame>),
    ("http-status-summary.json", Plain,   schema_of::<StatusSummary>),
    ("http-pool-info.json",     Plain,    schema_of::<PoolInfo>),
    ("http-node-status.json",   Plain,    schema_of::<NodeStatus>),
    ("http-cost-report.json",   Plain,    schema_of::<CostReport>),
    ("http-new-token-request.json", Plain, schema_of::<NewTokenRequest>),
    ("http-new-token.json",     Plain,    schema_of::<NewToken>),
    ("http-api-error.json",     Plain,    schema_of::<ApiErrorBody>),
    ("agent-refusal.json",      Plain,    schema_of::<AgentRefusal>),
    ("alert-escalation.json",   Plain,    schema_of::<Escalation>),
    ("http-artifact-info.json", Plain,    schema_of::<ArtifactInfo>),
    ("http-run-info.json",      Plain,    schema_of::<RunInfo>),
    ("http-run-spec.json",      Plain,    schema_of::<RunSpec>),
    ("http-diagnosis.json",     Plain,    schema_of::<Diagnosis>),
    ("http-leader-info.json",   Plain,    schema_of::<LeaderInfo>),
    ("http-replay-status.json", Plain,    schema_of::<ReplayStatus>),
    ("http-pool-explain.json",  Plain,    schema_of::<fleet_core::protocol::PoolExplain>),
    ("http-claim-history.json", Plain,    schema_of::<fleet_core::protocol::ClaimHistory>),
    ("http-console-state.json", Plain,    schema_of::<fleet_core::protocol::ConsoleState>),
    ("http-job-log.json",       Plain,    schema_of::<fleet_core::protocol::JobLog>),
    ("http-backup-request.json", Plain,   schema_of::<fleet_core::protocol::BackupRequest>),
    ("backup.json",             Plain,    schema_of::<fleet_core::protocol::Backup>),
    ("backup-origin.json",      Plain,    schema_of::<fleet_core::protocol::BackupOrigin>),
    ("ssh-host-record.json",    Plain,    schema_of::<SshHostRecord>),
    ("alert-pagerduty-event.json", Plain, schema_of::<PagerDutyEvent>),
];

const BLESS_VAR: &str = "FLEET_BLESS_SCHEMA";
const REGENERATE: &str =
    "FLEET_BLESS_SCHEMA=1 cargo test -p fleet-core --all-features --test schema";

/// The root schema of `T` (draft 2020-12; what fleet's decoder accepts:
/// fields with defaults are optional).
fn schema_of<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// Wraps a message's root schema in the envelope: the message moves into
/// `$defs` under its title and `msg` refers to it.
fn enveloped(inner: Schema) -> Value {
    let mut inner = inner.to_value();
    let obj = inner
        .as_object_mut()
        .unwrap_or_else(|| panic!("a root schema is an object"));
    let dialect = obj.remove("$schema").unwrap_or(Value::Null);
    let mut defs = match obj.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    let name = match obj.get("title") {
        Some(Value::String(t)) => t.clone(),
        _ => panic!("a derived root schema has a title"),
    };
    assert!(
        !defs.contains_key(&name),
        "{name} is already a definition of its own schema"
    );
    defs.insert(name.clone(), inner);
    json!({
        "$schema": dialect,
        "title": format!("{name} envelope"),
        "description": format!(
            "A {name} as it travels: the versioned envelope written by fleet_core::protocol::encode. \
             Decoders refuse input over {MAX_MESSAGE_BYTES} bytes and another `v`, and ignore unknown fields."
        ),
        "type": "object",
        "required": ["v", "msg"],
        "properties": {
            "v": {
                "description": "The protocol version.",
                "type": "integer",
                "const": PROTOCOL_VERSION,
            },
            "msg": { "$ref": format!("#/$defs/{name}") },
        },
        "$defs": defs,
    })
}

/// The same value with every object's keys in sorted order, so the files do
/// not depend on serde_json's `preserve_order` feature.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn render(framing: Framing, schema: Schema) -> String {
    let value = match framing {
        Envelope => enveloped(schema),
        Plain => schema.to_value(),
    };
    let mut text = serde_json::to_string_pretty(&sorted(value))
        .unwrap_or_else(|e| panic!("a schema serializes: {e}"));
    text.push('\n');
    text
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema")
}

/// The first line where two texts differ, for the failure message.
fn first_difference(want: &str, got: &str) -> String {
    let (mut w, mut g) = (want.lines(), got.lines());
    for n in 1.. {
        match (w.next(), g.next()) {
            (None, None) => break,
            (a, b) if a == b => {}
            (a, b) => {
                return format!(
                    "line {n}: generated {:?}, committed {:?}",
                    a.unwrap_or("<end>"),
                    b.unwrap_or("<end>")
                );
            }
        }
    }
    "no line differs (line endings?)".to_owned()
}

#[test]
fn committed_schemas_match_the_code() {
    let dir = schema_dir();
    let bless = std::env::var_os(BLESS_VAR).is_some_and(|v| v == "1");
    if bless {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for &(file, framing, schema) in WIRE {
        assert!(names.insert(file), "{file} is listed twice in WIRE");
        let path = dir.join(file);
        let want = render(framing, schema());
        if bless {
            fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(got) if got == want => {}
            Ok(got) => problems.push(format!(
                "schema/{file} is out of date ({})",
                first_difference(&want, &got)
            )),
            Err(e) => problems.push(format!("schema/{file} cannot be read: {e}")),
        }
    }
    // A schema whose type left the table must not stay behind.
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if file.ends_with(".json") && !names.contains(file) {
            if bless {
                fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                problems.push(format!("schema/{file} belongs to no type in WIRE"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the committed JSON Schemas differ from the wire types:\n  {}\n\
         If the change to the wire is intended, regenerate them and commit schema/:\n  {REGENERATE}",
        problems.join("\n  ")
    );
}

#[test]
fn id_schemas_carry_the_decoder_check() {
    let text = render(Envelope, schema_of::<ClaimMsg>());
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let claim_id = &value["$defs"]["ClaimId"];
    assert_eq!(claim_id["type"], "string");
    assert_eq!(claim_id["pattern"], "^[A-Za-z0-9_-]{1,64}$");
    assert_eq!(claim_id["maxLength"], 64);
    let record = render(Envelope, schema_of::<Record>());
    assert!(
        record.contains(r#""pattern": "^[A-Za-z0-9._-]{1,64}$""#),
        "InstanceType allows '.'"
    );
}
