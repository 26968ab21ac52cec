//! Reading the merged TOML file and environment: each section and each `[[jobs]]` entry
//! is deserialized on its own, and a key that does not fit is reported and peeled off so
//! that the rest is still read. Every problem names its key path and where the value came
//! from (the file, or the environment variable).

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::{Figment, Source};
use serde::de::DeserializeOwned;

use super::ConfigError;

/// The merged configuration, and every problem found in it so far.
pub struct Reader<'f> {
    figment: &'f Figment,
    /// The file's path, the origin of what is not known to come from elsewhere.
    file: String,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

fn noun(a: &Actual) -> &'static str {
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        Actual::Unit | Actual::Option => "nothing",
        _ => "something else",
    }
}

/// serde's name for what was expected, in the config's words.
fn expected(e: &str) -> &str {
    match e {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "a whole number",
        "a boolean" | "bool" => "true or false",
        other => other,
    }
}

/// What a deserialization problem means, in the config's words.
fn message(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.clone(),
        Kind::InvalidType(actual, e) => format!("expected {}, found {}", expected(e), noun(actual)),
        Kind::InvalidValue(Actual::Signed(n), e) => {
            format!("{n} is out of range (expected {})", expected(e))
        }
        Kind::InvalidValue(Actual::Unsigned(n), e) => {
            format!("{n} is out of range (expected {})", expected(e))
        }
        Kind::InvalidValue(actual, expected) => format!("{actual} is not {expected}"),
        Kind::UnknownVariant(v, expected) => format!("{v:?} is not one of {}", expected.join(", ")),
        Kind::UnknownField(field, expected) => unknown_key(field, expected, ""),
        other => other.to_string(),
    }
}

/// "unknown key", the known key `field` is likely a slip for, and every known key.
pub fn unknown_key(field: &str, expected: &[&str], whose: &str) -> String {
    let closest = expected
        .iter()
        .map(|k| (strsim::damerau_levenshtein(field, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min();
    let hint = closest.map_or(String::new(), |(_, k)| format!("; did you mean {k:?}?"));
    format!(
        "unknown key{whose}{hint} (expected one of: {})",
        expected.join(", ")
    )
}

/// The keys a `deny_unknown_fields` table `T` knows, as serde lists them when it meets
/// one it does not.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = Dict::new();
    probe.insert("\u{0}".into(), Value::from(""));
    let probe = Value::from(probe);
    match T::deserialize(&probe) {
        Err(e) => match e.kind {
            Kind::UnknownField(_, expected) => expected,
            _ => &[],
        },
        Ok(_) => &[],
    }
}

/// The value at `path` inside `v`.
fn find<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.as_dict()?.get(k))
}

/// Removes the key at `path` inside `v`; whether there was one.
fn remove(v: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for k in parents {
        let Value::Dict(_, d) = cur else { return false };
        let Some(next) = d.get_mut(k) else {
            return false;
        };
        cur = next;
    }
    match cur {
        Value::Dict(_, d) => d.remove(last).is_some(),
        _ => false,
    }
}

impl<'f> Reader<'f> {
    pub fn new(figment: &'f Figment, file: String) -> Self {
        Self {
            figment,
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The file `v` came from, or the environment variable that set `key`.
    pub fn origin(&self, v: Option<&Value>, key: &str) -> String {
        match v.and_then(|v| self.figment.get_metadata(v.tag())) {
            Some(md) => match &md.source {
                Some(Source::File(p)) => p.display().to_string(),
                _ => format!(
                    "environment variable AGENT_{}",
                    key.replace(['[', ']'], "")
                        .to_ascii_uppercase()
                        .replace('.', "__")
                ),
            },
            None => self.file.clone(),
        }
    }

    /// Records a problem with `key`, whose value (if any) is `v`.
    pub fn error(&mut self, key: impl Into<String>, v: Option<&Value>, message: impl Into<String>) {
        let key = key.into();
        let origin = self.origin(v, &key);
        self.errors.push(ConfigError {
            origin,
            key,
            message: message.into(),
        });
    }

    /// `value` (found at `key`) as a `T`. A key that does not fit is reported and left
    /// out, and the rest read again, so every such problem is reported at once.
    pub fn read<T: DeserializeOwned + Default>(&mut self, key: &str, value: Option<&Value>) -> T {
        let Some(original) = value else {
            return T::default();
        };
        let mut v = original.clone();
        loop {
            let e = match T::deserialize(&v) {
                Ok(t) => return t,
                Err(e) => e,
            };
            let mut path = e.path.clone();
            if let Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let full = path.iter().fold(key.to_string(), |k, p| {
                if k.is_empty() {
                    p.clone()
                } else {
                    format!("{k}.{p}")
                }
            });
            let at = find(original, &path).or(Some(original));
            self.error(full, at, message(&e.kind));
            if !remove(&mut v, &path) {
                return T::default();
            }
        }
    }

    /// The table at `key` of `root`, if it is one.
    pub fn table<'v>(&mut self, root: &'v Dict, key: &str) -> Option<&'v Value> {
        let v = root.get(key)?;
        if v.as_dict().is_none() {
            self.error(
                key,
                Some(v),
                format!("expected a table, found {}", noun_of(v)),
            );
            return None;
        }
        Some(v)
    }
}

/// The value of key `k` in the table `v`.
pub fn at<'v>(v: Option<&'v Value>, k: &str) -> Option<&'v Value> {
    v?.as_dict()?.get(k)
}

/// What kind of value `v` is, for messages.
pub fn noun_of(v: &Value) -> &'static str {
    match v {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}
