//! Mutations: byte-level (any target) and tree-level for JSON and TOML
//! (inputs stay well-formed, so they reach the typed validation behind the
//! parser).

use rand::Rng as _;
use rand::seq::SliceRandom;
use serde_json::Value;

/// The fuzzer's RNG: ChaCha8, reproducible on every platform.
pub type Rng = rand_chacha::ChaCha8Rng;

/// Byte values that tend to sit on boundaries.
const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b'\n', b'=',
];

/// Numbers, as text, at the edges of the integer types and of JSON.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-0.0",
    "0.5",
    "1e-320",
];

/// Tokens useful in any of the text formats.
const GENERIC_TOKENS: &[&str] = &[
    "null", "true", "false", "\"\"", "{}", "[]", "\"v\"", "\"msg\"", "\"type\"", "\\u0000",
    "\\ud800", "é", "\u{202e}", "..", "/", "*", ">", " ", "#", "[[", "]]", "'''", "\"\"\"",
];

/// Applies 1..=6 byte mutations (fewer more often).
pub fn bytes(data: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[Vec<u8>], rng: &mut Rng) {
    let n = 1 + (rng.gen_range(0..64u32).leading_zeros().saturating_sub(26) as usize).min(5);
    for _ in 0..n {
        one_byte_mutation(data, pool, dict, rng);
    }
}

fn pos(data: &[u8], rng: &mut Rng) -> usize {
    if data.is_empty() {
        0
    } else {
        rng.gen_range(0..data.len())
    }
}

fn range(data: &[u8], rng: &mut Rng) -> (usize, usize) {
    let a = pos(data, rng);
    let max = (data.len() - a.min(data.len())).min(64);
    let len = if max == 0 { 0 } else { rng.gen_range(1..=max) };
    (a, a + len)
}

fn one_byte_mutation(data: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[Vec<u8>], rng: &mut Rng) {
    match rng.gen_range(0..14) {
        0 if !data.is_empty() => {
            let i = pos(data, rng);
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if !data.is_empty() => {
            let i = pos(data, rng);
            data[i] = INTERESTING_BYTES.choose(rng).copied().unwrap_or(0);
        }
        2 if !data.is_empty() => {
            let i = pos(data, rng);
            data[i] = data[i].wrapping_add(rng.gen_range(1..=8)).wrapping_sub(4);
        }
        3 => {
            let i = pos(data, rng);
            let k = rng.gen_range(1..=8);
            for _ in 0..k {
                data.insert(i.min(data.len()), rng.r#gen());
            }
        }
        4 if !data.is_empty() => {
            let (a, b) = range(data, rng);
            data.drain(a..b);
        }
        5 if !data.is_empty() => {
            let (a, b) = range(data, rng);
            let piece = data[a..b].to_vec();
            let at = pos(data, rng);
            data.splice(at..at, piece);
        }
        6 if !data.is_empty() => {
            let cut = pos(data, rng);
            data.truncate(cut);
        }
        7 => {
            // Splice: a prefix of this input and a suffix of another.
            let other = &pool[rng.gen_range(0..pool.len())];
            let a = pos(data, rng);
            let b = pos(other, rng);
            data.truncate(a);
            data.extend_from_slice(other.get(b..).unwrap_or(&[]));
        }
        8 | 9 => {
            let token = pick_token(dict, rng);
            let at = pos(data, rng);
            if rng.gen_ratio(1, 2) || data.is_empty() {
                data.splice(at..at, token);
            } else {
                let end = (at + token.len()).min(data.len());
                data.splice(at..end, token);
            }
        }
        10 => replace_number(data, rng),
        11 if !data.is_empty() => {
            // Nesting: repeat one bracket many times.
            let open = [b'[', b'{'][rng.gen_range(0..2)];
            let at = pos(data, rng);
            let count = [10, 200, 5000][rng.gen_range(0..3)];
            data.splice(at..at, std::iter::repeat_n(open, count));
        }
        12 if rng.gen_ratio(1, 64) && !data.is_empty() => {
            // Past the 1 MiB message limit, now and then.
            let target = (1 << 20) + rng.gen_range(0..64);
            let unit = data.clone();
            while data.len() < target {
                data.extend_from_slice(&unit);
            }
        }
        _ => {
            let i = pos(data, rng);
            data.insert(i.min(data.len()), rng.r#gen());
        }
    }
}

fn pick_token(dict: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    if !dict.is_empty() && rng.gen_ratio(3, 4) {
        return dict[rng.gen_range(0..dict.len())].clone();
    }
    if rng.gen_ratio(1, 2) {
        INTERESTING_NUMBERS[rng.gen_range(0..INTERESTING_NUMBERS.len())]
            .as_bytes()
            .to_vec()
    } else {
        GENERIC_TOKENS[rng.gen_range(0..GENERIC_TOKENS.len())]
            .as_bytes()
            .to_vec()
    }
}

/// Replaces a run of digits with a number at some edge.
fn replace_number(data: &mut Vec<u8>, rng: &mut Rng) {
    let digits: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .collect();
    let Some(&start) = digits.choose(rng) else {
        return;
    };
    let end = (start..data.len())
        .find(|&i| !data[i].is_ascii_digit())
        .unwrap_or(data.len());
    let n = INTERESTING_NUMBERS[rng.gen_range(0..INTERESTING_NUMBERS.len())];
    data.splice(start..end, n.bytes());
}

/// Dictionary of a JSON corpus: every object key and string value, quoted.
pub fn json_dictionary(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<Vec<u8>>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.insert(format!("\"{k}\"").into_bytes());
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::String(s) if s.len() <= 64 => {
                out.insert(format!("\"{s}\"").into_bytes());
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for s in seeds {
        for v in json_values(s) {
            walk(&v, &mut out);
        }
    }
    out.into_iter().collect()
}

/// The JSON documents in `bytes`: the whole input, or (for framed inputs)
/// every `{…}` stretch that parses.
fn json_values(bytes: &[u8]) -> Vec<Value> {
    if let Ok(v) = serde_json::from_slice(bytes) {
        return vec![v];
    }
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'{') {
        let start = i + off;
        let mut stream = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                out.push(v);
                i = start + stream.byte_offset().max(1);
            }
            _ => i = start + 1,
        }
    }
    out
}

/// A JSON number or string at some edge of what a field can hold.
fn interesting_value(rng: &mut Rng, dict: &[String]) -> Value {
    match rng.gen_range(0..10) {
        0 => Value::Null,
        1 => Value::Bool(rng.r#gen()),
        2 | 3 => {
            let n = INTERESTING_NUMBERS[rng.gen_range(0..INTERESTING_NUMBERS.len())];
            serde_json::from_str(n).unwrap_or(Value::Null)
        }
        4 => Value::String(String::new()),
        5 => Value::String("a".repeat([63, 64, 65, 300, 70_000][rng.gen_range(0..5)])),
        6 => Value::String(
            [
                "..",
                "../x",
                "/etc/passwd",
                "a.b",
                "a b",
                "*",
                ">",
                "é",
                "\u{0}",
                "age1",
            ][rng.gen_range(0..10)]
            .to_owned(),
        ),
        7 => Value::Array(Vec::new()),
        8 => Value::Object(serde_json::Map::new()),
        _ => match dict.choose(rng) {
            Some(s) => Value::String(s.clone()),
            None => Value::Null,
        },
    }
}

/// The JSON pointer of a random node of `v`, reached by a random walk from
/// the root.
fn random_path(v: &Value, rng: &mut Rng) -> String {
    let mut path = String::new();
    let mut node = v;
    loop {
        let len = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 || !rng.gen_ratio(3, 4) {
            return path;
        }
        let i = rng.gen_range(0..len);
        let next = match node {
            Value::Object(m) => m.iter().nth(i).map(|(k, child)| {
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                child
            }),
            Value::Array(a) => a.get(i).inspect(|_| {
                path.push('/');
                path.push_str(&i.to_string());
            }),
            _ => None,
        };
        match next {
            Some(child) => node = child,
            None => return path,
        }
    }
}

/// A copy of a random node of `v`.
fn random_subtree(v: &Value, rng: &mut Rng) -> Value {
    v.pointer(&random_path(v, rng))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Mutates a JSON document as a tree: values swapped for edge values or
/// for subtrees of other seeds, keys dropped, added or renamed, arrays
/// emptied or grown. `None` if `input` is not JSON.
pub fn json(input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(input).ok()?;
    let donor: Option<Value> = pool
        .choose(rng)
        .and_then(|d| serde_json::from_slice(d).ok());
    let keys = donor.as_ref().map(keys_of).unwrap_or_default();
    for _ in 0..rng.gen_range(1..=3) {
        mutate_json_tree(&mut doc, donor.as_ref(), &keys, rng);
    }
    let out = if rng.gen_ratio(1, 8) {
        serde_json::to_vec_pretty(&doc)
    } else {
        serde_json::to_vec(&doc)
    };
    out.ok()
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    stack.push(v);
                }
            }
            Value::Array(a) => stack.extend(a.iter()),
            Value::String(s) if s.len() <= 40 => out.push(s.clone()),
            _ => {}
        }
    }
    out
}

/// One tree mutation of `doc`.
pub fn mutate_json_tree(doc: &mut Value, donor: Option<&Value>, keys: &[String], rng: &mut Rng) {
    let graft = donor.map(|d| random_subtree(d, rng));
    let path = random_path(doc, rng);
    let Some(node) = doc.pointer_mut(&path) else {
        return;
    };
    match rng.gen_range(0..8) {
        0 | 1 => *node = interesting_value(rng, keys),
        2 => {
            if let Some(g) = graft {
                *node = g;
            }
        }
        3 => match node {
            Value::Object(m) if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                if let Some(k) = m.keys().nth(i).cloned() {
                    m.remove(&k);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.gen_range(0..a.len());
                a.remove(i);
            }
            other => *other = interesting_value(rng, keys),
        },
        4 => match node {
            Value::Object(m) => {
                let key = keys.choose(rng).cloned().unwrap_or_else(|| "x".to_owned());
                let v = graft.unwrap_or_else(|| interesting_value(rng, keys));
                m.insert(key, v);
            }
            Value::Array(a) => {
                let v = match a.choose(rng) {
                    Some(v) if rng.gen_ratio(1, 2) => v.clone(),
                    _ => interesting_value(rng, keys),
                };
                let times = [1, 2, 100][rng.gen_range(0..3)];
                for _ in 0..times {
                    a.push(v.clone());
                }
            }
            other => *other = interesting_value(rng, keys),
        },
        5 => {
            // Rename a key (keeps the value): a misspelt or foreign field.
            if let Value::Object(m) = node
                && !m.is_empty()
            {
                let i = rng.gen_range(0..m.len());
                if let Some(k) = m.keys().nth(i).cloned()
                    && let Some(v) = m.remove(&k)
                {
                    let new = keys.choose(rng).cloned().unwrap_or_else(|| format!("{k}_"));
                    m.insert(new, v);
                }
            }
        }
        6 => {
            let inner = node.take();
            *node = if rng.gen_ratio(1, 2) {
                Value::Array(vec![inner])
            } else {
                let mut m = serde_json::Map::new();
                m.insert("msg".to_owned(), inner);
                Value::Object(m)
            };
        }
        _ => {
            // Type confusion on scalars: a number as a string and back.
            *node = match node.take() {
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => match s.parse::<i64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => Value::from(s.len()),
                },
                Value::Bool(b) => Value::from(u8::from(b)),
                other => other,
            };
        }
    }
}

/// Mutates a TOML document as a tree, like [`json`]. `None` if `input` is
/// not a TOML document.
pub fn toml(input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    // Through JSON: the same tree mutations, then back to TOML (which
    // cannot hold null: those become a string).
    let mut json = serde_json::to_value(&doc).ok()?;
    let donor: Option<Value> = pool
        .choose(rng)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| serde_json::to_value(t).ok());
    let keys = donor.as_ref().map(keys_of).unwrap_or_default();
    for _ in 0..rng.gen_range(1..=3) {
        mutate_json_tree(&mut json, donor.as_ref(), &keys, rng);
    }
    let table = json_to_toml(json)?;
    match table {
        toml::Value::Table(t) => toml::to_string(&t).ok().map(String::into_bytes),
        _ => None,
    }
}

fn json_to_toml(v: Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => toml::Value::String("null".to_owned()),
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(a) => toml::Value::Array(a.into_iter().filter_map(json_to_toml).collect()),
        Value::Object(m) => toml::Value::Table(
            m.into_iter()
                .filter_map(|(k, v)| Some((k, json_to_toml(v)?)))
                .collect(),
        ),
    })
}

/// Dictionary of a TOML corpus: keys, `[section]` headers and string values.
pub fn toml_dictionary(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    for s in seeds {
        let Ok(text) = std::str::from_utf8(s) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                out.insert(format!("\n{line}\n").into_bytes());
            } else if let Some((k, v)) = line.split_once('=') {
                out.insert(format!("\n{} = ", k.trim()).into_bytes());
                out.insert(v.trim().as_bytes().to_vec());
            }
        }
    }
    out.into_iter().collect()
}
