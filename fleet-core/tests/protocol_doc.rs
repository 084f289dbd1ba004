//! PROTOCOL.md cannot drift from the code.
//!
//! Every example in PROTOCOL.md is a fenced block with the info string
//! `<language> fleet:<Tag>`; [`REGISTRY`] says how to check each tag. An
//! example must decode with its type (enveloped ones through the real
//! codec), survive `decode(encode(x)) == x`, and hold no field the
//! re-encoded message lacks (a misspelt optional field would otherwise be
//! ignored silently, as unknown fields are). The committed schemas under
//! `schema/` (kept equal to the code by `tests/schema.rs`) then say what the
//! document must cover: an example of every top-level type, every variant
//! of it, and every tag and enum value by name.
//!
//! A new wire type: one line in [`REGISTRY`], one in `tests/schema.rs`'s
//! `WIRE`, and a section of PROTOCOL.md with its examples.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use fleet_core::ids::{ClaimId, JobId, NodeId, PoolName, Workspace};
use fleet_core::protocol::{
    AgentMsg, AgentRefusal, BootstrapRecord, ClaimMsg, ClaimReply, CredentialsBundle, DaemonMsg,
    Discovery, ExecFrame, FleetRecord, FollowerRecord, JobMsg, JobReply, LeaderRecord, QueueClaim,
    QueueRecord, Record, SealedCredentials, WsClientFrame, WsServerFrame,
    credentials_signing_payload, decode, encode,
};
use fleet_core::protocol::{
    ApiErrorBody, ArtifactInfo, CostReport, Diagnosis, Escalation, LeaderInfo, NewToken,
    NewTokenRequest, NodeStatus, PagerDutyEvent, PoolInfo, ReplayStatus, RunInfo, RunSpec,
    SshHostRecord, StatusSummary,
};
use fleet_core::subjects::{ClaimVerb, Subjects};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Checks one example's text; returns its message (the `msg` of an
/// envelope, the value of plain JSON) for the coverage checks.
type Check = fn(&str) -> Result<Value, String>;

/// Every tag an example may carry. One line per type.
const REGISTRY: &[(&str, Check)] = &[
    ("ClaimMsg", enveloped::<ClaimMsg>),
    ("ClaimReply", enveloped::<ClaimReply>),
    ("AgentMsg", enveloped::<AgentMsg>),
    ("DaemonMsg", enveloped::<DaemonMsg>),
    ("JobMsg", enveloped::<JobMsg>),
    ("JobReply", enveloped::<JobReply>),
    ("Record", enveloped::<Record>),
    ("LeaderRecord", enveloped::<LeaderRecord>),
    ("FollowerRecord", enveloped::<FollowerRecord>),
    ("FleetRecord", enveloped::<FleetRecord>),
    ("BootstrapRecord", enveloped::<BootstrapRecord>),
    ("QueueClaim", enveloped::<QueueClaim>),
    ("QueueRecord", enveloped::<QueueRecord>),
    ("SealedCredentials", plain::<SealedCredentials>),
    ("CredentialsBundle", plain::<CredentialsBundle>),
    ("Discovery", plain::<Discovery>),
    ("ExecFrame", plain::<ExecFrame>),
    ("WsClientFrame", enveloped::<WsClientFrame>),
    ("WsServerFrame", enveloped::<WsServerFrame>),
    ("StatusSummary", plain::<StatusSummary>),
    ("PoolInfo", plain::<PoolInfo>),
    ("NodeStatus", plain::<NodeStatus>),
    ("CostReport", plain::<CostReport>),
    ("Escalation", plain::<Escalation>),
    ("ArtifactInfo", plain::<ArtifactInfo>),
    ("RunInfo", plain::<RunInfo>),
    ("RunSpec", plain::<RunSpec>),
    ("Diagnosis", plain::<Diagnosis>),
    ("LeaderInfo", plain::<LeaderInfo>),
    ("ReplayStatus", plain::<ReplayStatus>),
    ("PoolExplain", plain::<fleet_core::protocol::PoolExplain>),
    ("ClaimHistory", plain::<fleet_core::protocol::ClaimHistory>),
    ("ConsoleState", plain::<fleet_core::protocol::ConsoleState>),
    ("JobLog", plain::<fleet_core::protocol::JobLog>),
    (
        "BackupRequest",
        plain::<fleet_core::protocol::BackupRequest>,
    ),
    ("Backup", plain::<fleet_core::protocol::Backup>),
    ("BackupOrigin", plain::<fleet_core::protocol::BackupOrigin>),
    ("SshHostRecord", plain::<SshHostRecord>),
    ("PagerDutyEvent", plain::<PagerDutyEvent>),
    ("NewTokenRequest", plain::<NewTokenRequest>),
    ("NewToken", plain::<NewToken>),
    ("ApiErrorBody", plain::<ApiErrorBody>),
    ("signing-payload", signing_payload),
    ("AgentRefusal", agent_refusals),
];

/// A message as it travels: the envelope, through `protocol::decode`.
fn enveloped<T>(text: &str) -> Result<Value, String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let x: T = decode(text.as_bytes()).map_err(|e| format!("does not decode: {e}"))?;
    let bytes = encode(&x).map_err(|e| format!("does not encode: {e}"))?;
    let y: T = decode(&bytes).map_err(|e| format!("its re-encoding does not decode: {e}"))?;
    if x != y {
        return Err(format!("decode(encode(x)) != x:\n  x = {x:?}\n  y = {y:?}"));
    }
    let example: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let again: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    contained(&example, &again, "")?;
    Ok(example.get("msg").cloned().unwrap_or(Value::Null))
}

/// Plain JSON, through serde_json.
fn plain<T>(text: &str) -> Result<Value, String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let x: T = serde_json::from_str(text).map_err(|e| format!("does not decode: {e}"))?;
    let again = serde_json::to_value(&x).map_err(|e| format!("does not encode: {e}"))?;
    let y: T = serde_json::from_value(again.clone())
        .map_err(|e| format!("its re-encoding does not decode: {e}"))?;
    if x != y {
        return Err(format!("decode(encode(x)) != x:\n  x = {x:?}\n  y = {y:?}"));
    }
    let example: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    contained(&example, &again, "")?;
    Ok(example)
}

/// The signed bytes of a sealed bundle: rebuilt from the example's lines
/// with `credentials_signing_payload`, they must be the example. Returns
/// the parts, which must be those of the `SealedCredentials` example.
fn signing_payload(text: &str) -> Result<Value, String> {
    let mut parts = text.splitn(5, '\n');
    let mut next = |what: &str| {
        parts
            .next()
            .ok_or_else(|| format!("ends before the {what} line"))
    };
    let _format = next("format")?;
    let claim = ClaimId::new(next("claim id")?).map_err(|e| e.to_string())?;
    let recipient = next("recipient")?;
    let expires_at: u64 = next("expiry")?
        .parse()
        .map_err(|e| format!("expiry: {e}"))?;
    let ciphertext = next("ciphertext")?
        .strip_suffix('\n')
        .ok_or("the ciphertext is not followed by a newline")?;
    if !ciphertext.ends_with("-----END AGE ENCRYPTED FILE-----\n") {
        return Err(
            "the ciphertext is an armored age file, which ends in a newline of its own \
                    (so the payload ends with an empty line)"
                .to_owned(),
        );
    }
    let rebuilt = credentials_signing_payload(&claim, recipient, expires_at, ciphertext);
    if rebuilt != text.as_bytes() {
        return Err(format!(
            "credentials_signing_payload builds {:?}",
            String::from_utf8_lossy(&rebuilt)
        ));
    }
    Ok(serde_json::json!({ "expires_at": expires_at, "ciphertext": ciphertext }))
}

/// Close frames of refused agent sessions, one `<code> <reason>` a line:
/// each reason must name an [`AgentRefusal`] (as serde writes it too) sent
/// with that code, and every refusal must be there.
fn agent_refusals(text: &str) -> Result<Value, String> {
    let mut seen = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (code, reason) = line
            .split_once(' ')
            .ok_or_else(|| format!("{line:?} is not `<code> <reason>`"))?;
        let code: u16 = code.parse().map_err(|e| format!("{line:?}: {e}"))?;
        let refusal =
            AgentRefusal::parse(reason).ok_or_else(|| format!("{reason:?} is no AgentRefusal"))?;
        if code != refusal.close_code() {
            return Err(format!(
                "{reason} is sent with close code {}, not {code}",
                refusal.close_code()
            ));
        }
        let serde = serde_json::to_value(refusal).map_err(|e| e.to_string())?;
        if serde != reason {
            return Err(format!("{reason} encodes as {serde} in JSON"));
        }
        seen.push(refusal);
    }
    if let Some(missing) = AgentRefusal::ALL.iter().find(|r| !seen.contains(r)) {
        return Err(format!("no line for {missing}"));
    }
    Ok(Value::Array(
        seen.iter().map(|r| Value::from(r.as_str())).collect(),
    ))
}

/// Whether everything in `example` is in `again` (the re-encoded message),
/// which may add the fields fleet always writes.
fn contained(example: &Value, again: &Value, path: &str) -> Result<(), String> {
    match (example, again) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                let w = b.get(k).ok_or_else(|| {
                    format!(
                        "{here} is not in the re-encoded message: a field the type does not \
                         have (ignored as unknown), or one fleet leaves out (null, empty)"
                    )
                })?;
                contained(v, w, &here)?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{path}[{i}]"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!(
            "{path}: the example says {a}, re-encoded it is {b}"
        )),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn protocol_md() -> String {
    read(&repo_root().join("PROTOCOL.md"))
}

/// A tagged example of PROTOCOL.md.
struct Example {
    /// 1-based line of its opening fence.
    line: usize,
    tag: String,
    text: String,
}

/// The tagged examples, or what is wrong with the fences.
fn examples(doc: &str) -> (Vec<Example>, Vec<String>) {
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let mut body = Vec::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            let strip = l.len() - l.trim_start().len();
            body.push(&l[strip.min(indent)..]);
        }
        let line = i + 1;
        if !closed {
            problems.push(format!("line {line}: the fence is never closed"));
            break;
        }
        let mut words = info.split_whitespace();
        let language = words.next().unwrap_or("");
        let tag = words.find_map(|w| w.strip_prefix("fleet:"));
        match tag {
            Some(tag) => found.push(Example {
                line,
                tag: tag.to_owned(),
                text: body.join("\n") + "\n",
            }),
            None if language == "json" => problems.push(format!(
                "line {line}: a json example without a `fleet:<Tag>` in its fence is tested by nothing"
            )),
            None => {}
        }
    }
    (found, problems)
}

fn checked_examples() -> Vec<(Example, Value)> {
    let (found, mut problems) = examples(&protocol_md());
    let registry: BTreeMap<&str, Check> = REGISTRY.iter().copied().collect();
    let mut ok = Vec::new();
    for ex in found {
        match registry.get(ex.tag.as_str()) {
            None => problems.push(format!(
                "line {}: unknown type tag fleet:{} (add it to REGISTRY in {})",
                ex.line,
                ex.tag,
                file!()
            )),
            Some(check) => match check(&ex.text) {
                Ok(msg) => ok.push((ex, msg)),
                Err(why) => {
                    problems.push(format!("line {}: fleet:{} example: {why}", ex.line, ex.tag))
                }
            },
        }
    }
    assert!(
        problems.is_empty(),
        "PROTOCOL.md does not match the code:\n  {}",
        problems.join("\n  ")
    );
    ok
}

#[test]
fn every_example_decodes_and_round_trips() {
    let checked = checked_examples();
    assert!(checked.len() >= REGISTRY.len(), "too few examples found");
}

#[test]
fn the_signing_payload_signs_the_sealed_example() {
    let checked = checked_examples();
    let first = |tag: &str| {
        checked
            .iter()
            .find(|(ex, _)| ex.tag == tag)
            .map(|(_, msg)| msg.clone())
            .unwrap_or_else(|| panic!("no fleet:{tag} example"))
    };
    let (payload, sealed) = (first("signing-payload"), first("SealedCredentials"));
    for field in ["ciphertext", "expires_at"] {
        assert_eq!(
            payload[field], sealed[field],
            "the signing payload's {field} is not the SealedCredentials example's"
        );
    }
}

/// The committed schemas by type name: the message's own schema (for an
/// envelope schema, its `$defs` entry) and the whole file.
fn schemas() -> BTreeMap<String, (Value, Value)> {
    let dir = repo_root().join("schema");
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let root: Value = serde_json::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let title = root["title"].as_str().unwrap_or_default().to_owned();
        let (name, own) = match title.strip_suffix(" envelope") {
            Some(name) => (name.to_owned(), root["$defs"][name].clone()),
            None => (title, root.clone()),
        };
        out.insert(name, (own, root));
    }
    out
}

/// The `(tag field, value)` of each variant of a tagged enum's schema.
fn variants(schema: &Value) -> Vec<(String, String)> {
    let Some(alternatives) = schema["oneOf"].as_array() else {
        return Vec::new();
    };
    alternatives
        .iter()
        .filter_map(|alt| {
            alt["properties"]
                .as_object()?
                .iter()
                .find_map(|(k, p)| p["const"].as_str().map(|c| (k.to_owned(), c.to_owned())))
        })
        .collect()
}

#[test]
fn every_wire_type_and_variant_has_an_example() {
    let checked = checked_examples();
    let mut problems = Vec::new();
    for (tag, _) in REGISTRY {
        if !checked.iter().any(|(ex, _)| ex.tag == *tag) {
            problems.push(format!("no fleet:{tag} example"));
        }
    }
    for (name, (schema, _)) in schemas() {
        if !REGISTRY.iter().any(|(tag, _)| *tag == name) {
            problems.push(format!(
                "schema/ has {name}, REGISTRY does not (add it, with an example)"
            ));
            continue;
        }
        for (field, value) in variants(&schema) {
            let shown = checked
                .iter()
                .any(|(ex, msg)| ex.tag == name && msg[&field] == value.as_str());
            if !shown {
                problems.push(format!(
                    "no fleet:{name} example with \"{field}\": \"{value}\""
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "PROTOCOL.md misses examples:\n  {}",
        problems.join("\n  ")
    );
}

/// Every `const` and `enum` string of a schema: tag values and the values
/// of plain enumerations.
fn named_values(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("const", Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    ("enum", Value::Array(items)) => {
                        out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)));
                    }
                    _ => named_values(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| named_values(x, out)),
        _ => {}
    }
}

#[test]
fn every_tag_and_enum_value_is_named() {
    let doc = protocol_md();
    let mut values = BTreeSet::new();
    for (_, whole) in schemas().values() {
        named_values(whole, &mut values);
    }
    let missing: Vec<&String> = values
        .iter()
        .filter(|v| !doc.contains(&format!("`{v}`")) && !doc.contains(&format!("\"{v}\"")))
        .collect();
    assert!(
        values.len() > 50,
        "the schemas name too few values; did schema/ move?"
    );
    assert!(
        missing.is_empty(),
        "PROTOCOL.md never names these values the code knows (write them as `value`): {missing:?}"
    );
}

/// `built` with its sample values replaced by the placeholders the
/// document uses.
fn generic(built: &str, samples: &[(&str, &str)]) -> String {
    let mut s = match built.strip_prefix("fleet.") {
        Some(rest) => format!("<ns>.{rest}"),
        None => built.to_owned(),
    };
    for (sample, placeholder) in samples {
        s = s.replace(sample, placeholder);
    }
    s
}

#[test]
fn names_in_the_document_are_the_ones_subjects_builds() {
    let doc = protocol_md();
    let ws = Workspace::new("team-a").unwrap_or_else(|e| panic!("{e}"));
    let claim = ClaimId::new("build-42").unwrap_or_else(|e| panic!("{e}"));
    let node = NodeId::new("Linux_A-1").unwrap_or_else(|e| panic!("{e}"));
    let pool = PoolName::new("linux").unwrap_or_else(|e| panic!("{e}"));
    let job = JobId::new("nightly-7").unwrap_or_else(|e| panic!("{e}"));
    let s = Subjects::default();
    let samples: &[(&str, &str)] = &[
        ("team-a", "<workspace>"),
        ("build-42", "<claim_id>"),
        ("Linux_A-1", "<node_id>"),
        ("nightly-7", "<job_id>"),
        ("linux", "<pool>"),
    ];
    let verb = [("request", "<verb>")];
    let said = [
        // Concrete examples, as built.
        s.claim(ClaimVerb::Request, &ws, &claim),
        Subjects::node_server_name(&node),
        // Patterns, with the sample values as placeholders.
        generic(
            &s.claim(ClaimVerb::Request, &ws, &claim),
            &[verb[0], samples[0], samples[1]],
        ),
        generic(&s.claim(ClaimVerb::Granted, &ws, &claim), samples),
        generic(&s.claim(ClaimVerb::Revoked, &ws, &claim), samples),
        generic(
            &s.claim_workspace_wildcard(ClaimVerb::Granted, &ws),
            samples,
        ),
        generic(
            &s.claim_workspace_wildcard(ClaimVerb::Revoked, &ws),
            samples,
        ),
        generic(&s.workspace_permission(&ws), samples),
        generic(&Subjects::claim_cert_uri(&claim), samples),
        generic(&Subjects::node_cert_uri(&node), samples),
        generic(Subjects::claim_key(&ws, &claim).as_str(), samples),
        generic(Subjects::node_key(&pool, &node).as_str(), samples),
        generic(Subjects::job_key(&ws, &job).as_str(), samples),
        generic(Subjects::pool_key(&pool).as_str(), samples),
        generic(Subjects::leader_key().as_str(), samples),
    ];
    let missing: Vec<String> = said
        .iter()
        .map(|name| format!("`{name}`"))
        .filter(|name| !doc.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "PROTOCOL.md should name these as subjects.rs builds them: {missing:?}"
    );
}
