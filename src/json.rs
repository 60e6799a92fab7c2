//! JSON helpers shared by the trainer's checkpoints and the reports (feature `trainer`):
//!
//! - [`diff_fields`]: field-by-field comparison of two JSON values, so that a mismatch (of a saved
//!   configuration or data fingerprint against the current one) names the fields that differ
//!   instead of printing both documents;
//! - `nan`: serde helpers that read `null` back as NaN (serde_json writes non-finite floats as
//!   `null`), for every f64 a file may hold as NaN.
use serde_json::Value;

/// One field that differs: its dotted path (`train.lr`, `class_names[3]`) and both values
/// (`None` where the field is absent).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDiff {
    pub field: String,
    pub saved: Option<Value>,
    pub now: Option<Value>,
}

impl std::fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or_else(|| "(absent)".to_string(), Value::to_string);
        write!(f, "{}: saved {}, now {}", self.field, show(&self.saved), show(&self.now))
    }
}

/// Every leaf field where `saved` and `now` differ, in document order (objects by key, arrays by
/// index; an array of another length is one difference at the array itself).
pub fn diff_fields(saved: &Value, now: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk("", Some(saved), Some(now), &mut out);
    out
}

/// The differences as one line each, indented, for an error message.
pub fn describe_diffs(diffs: &[FieldDiff]) -> String {
    diffs.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), Some(u), Some(v), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldDiff {
            field: if path.is_empty() { "(whole value)".into() } else { path.to_string() },
            saved: a.cloned(),
            now: b.cloned(),
        }),
    }
}

/// serde_json writes non-finite floats as `null`; read `null` back as NaN instead of failing.
pub(crate) mod nan {
    use serde::{Deserialize, Deserializer};

    pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn vec_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}
