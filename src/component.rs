//! What every probe and check has in common: it is built from its own section of the
//! configuration file. A section is a serde struct declared next to the component's code; its
//! doc comments are the documentation (`docs/configuration.md` is generated from them, and a
//! test keeps the file current). The keys the agent itself reads in every section (`enabled`,
//! and for checks `interval`) are taken out before the rest is handed to the component, so a
//! component's struct holds only what is its own.

use std::time::Duration;

use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A component's options section.
pub trait Options: DeserializeOwned + Serialize + JsonSchema + Default {}
impl<T: DeserializeOwned + Serialize + JsonSchema + Default> Options for T {}

/// How a duration is written in the file (`30s`, `5m`, `1h`), for the generated reference;
/// the fields themselves are `Duration`s read with `humantime-serde`.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> Schema {
        schemars::json_schema!({ "type": "string", "format": "duration" })
    }
}

/// The options of a component that has none of its own.
#[derive(serde::Deserialize, Serialize, JsonSchema, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// A problem in one section, naming the field (`probes.qdisc.device_prefixes`).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SectionError {
    pub field: String,
    pub problem: String,
}

impl SectionError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The keys of a section that the agent reads for every component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Common {
    /// `enabled:`; unset means the default (on).
    pub enabled: Option<bool>,
    /// `interval:` (checks only).
    pub interval: Option<Duration>,
}

/// Which of [`Common`]'s keys a kind of component takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// `enabled`.
    Probe,
    /// `enabled` and `interval`.
    Check,
}

/// Splits the section at `path` into the common keys and the component's options `O`.
/// A missing section is the defaults; unknown keys are errors that name them.
pub fn parse<O: Options>(
    path: &str,
    section: Option<&serde_yaml::Value>,
    keys: Keys,
) -> Result<(Common, O), SectionError> {
    let mut common = Common::default();
    let mut rest = match section {
        None | Some(serde_yaml::Value::Null) => serde_yaml::Mapping::new(),
        Some(serde_yaml::Value::Mapping(m)) => m.clone(),
        Some(_) => return Err(SectionError::new(path, "must be a mapping of options")),
    };
    if let Some(v) = rest.remove("enabled") {
        common.enabled = Some(
            serde_yaml::from_value(v)
                .map_err(|e| SectionError::new(format!("{path}.enabled"), e.to_string()))?,
        );
    }
    if let Some(v) = rest.remove("interval") {
        let field = format!("{path}.interval");
        if keys == Keys::Probe {
            return Err(SectionError::new(
                field,
                "probes are read at every collection; only checks take an interval",
            ));
        }
        let text: String =
            serde_yaml::from_value(v).map_err(|e| SectionError::new(&field, e.to_string()))?;
        common.interval = Some(positive_duration(&field, &text)?);
    }
    let options = if rest.is_empty() {
        O::default()
    } else {
        // With the path of the bad key inside the section: "probes.qdisc.device_prefixes".
        serde_path_to_error::deserialize(serde_yaml::Value::Mapping(rest)).map_err(|e| {
            let at = e.path().to_string();
            let field = if at == "." {
                path.to_string()
            } else {
                format!("{path}.{at}")
            };
            SectionError::new(field, e.into_inner().to_string())
        })?
    };
    Ok((common, options))
}

/// A duration above zero written like `30s` or `5m`.
pub fn positive_duration(field: &str, text: &str) -> Result<Duration, SectionError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        SectionError::new(
            field,
            format!("{text:?} is not a duration (e.g. 15s, 1m): {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(SectionError::new(field, "must be greater than zero"));
    }
    Ok(d)
}

/// The reference of one section as Markdown: a table of its keys (type, default, meaning),
/// then one table per nested object. `path` is how a user writes the section
/// (`probes.qdisc`); `common` lists the keys the agent adds (see [`Keys`]).
pub fn reference(path: &str, schema: &Schema, common: Option<Keys>) -> String {
    let root = schema.as_value();
    let defs = root.get("$defs").cloned().unwrap_or(Value::Null);
    let mut rows = Vec::new();
    match common {
        Some(Keys::Probe) => rows.push(row("enabled", "boolean", "`true`", "Read this probe.")),
        Some(Keys::Check) => {
            rows.push(row("enabled", "boolean", "`true`", "Run this check."));
            rows.push(row(
                "interval",
                "duration",
                "`checks.interval`",
                "How often it runs.",
            ));
        }
        None => {}
    }
    let mut nested = Vec::new();
    table_rows(root, &defs, "", &mut rows, &mut nested);
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No options.\n");
    } else {
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        for r in rows {
            out.push_str(&r);
        }
    }
    for (key, def) in nested {
        let at = if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        };
        out.push_str(&format!("\nEach entry of `{at}`:\n\n"));
        let mut rows = Vec::new();
        table_rows(&def, &defs, "", &mut rows, &mut Vec::new());
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        for r in rows {
            out.push_str(&r);
        }
    }
    out
}

fn row(key: &str, kind: &str, default: &str, meaning: &str) -> String {
    format!("| `{key}` | {kind} | {default} | {} |\n", one_line(meaning))
}

/// Doc comments span lines; a table cell cannot.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn table_rows(
    object: &Value,
    defs: &Value,
    prefix: &str,
    rows: &mut Vec<String>,
    nested: &mut Vec<(String, Value)>,
) {
    let Some(props) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, prop) in props {
        let name = format!("{prefix}{key}");
        let (kind, object_def) = type_of(prop, defs);
        let default = match prop.get("default") {
            // A section: its own table says what its keys default to.
            _ if kind == "object" => "see its section".to_string(),
            None | Some(Value::Null) => "none".to_string(),
            Some(Value::Array(a)) if a.is_empty() => "none".to_string(),
            Some(Value::Object(o)) if o.is_empty() => "none".to_string(),
            Some(v) => format!("`{}`", serde_json::to_string(v).unwrap_or_default()),
        };
        let mut meaning = prop
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(variants) = enum_variants(prop, defs) {
            meaning.push_str(&format!(" One of: {}.", variants.join("; ")));
        }
        rows.push(row(&name, &kind, &default, &meaning));
        // Lists of objects get a table of their entries' keys; a plain section has its own.
        if let Some(def) = object_def.filter(|_| kind.starts_with("list of")) {
            nested.push((name, def));
        }
    }
}

/// A readable type, and the definition of an object type whose keys get a table of their own.
fn type_of(prop: &Value, defs: &Value) -> (String, Option<Value>) {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let def = resolve(r, defs);
        if def.get("properties").is_some() {
            return ("object".into(), Some(def));
        }
        if enum_variants(&def, defs).is_some() {
            return ("string".into(), None);
        }
        return type_of(&def, defs);
    }
    for alt in ["anyOf", "oneOf"] {
        if let Some(list) = prop.get(alt).and_then(Value::as_array) {
            let non_null: Vec<&Value> = list
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if non_null.len() == 1 {
                return type_of(non_null[0], defs);
            }
            if let Some(t) = prop.get("title").and_then(Value::as_str) {
                return (t.to_string(), None);
            }
        }
    }
    match prop.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let (item, def) = prop
                .get("items")
                .map_or(("value".to_string(), None), |i| type_of(i, defs));
            (format!("list of {item}"), def)
        }
        Some(Value::String(t)) if t == "object" => ("mapping".into(), None),
        Some(Value::String(t))
            if prop.get("format").and_then(Value::as_str) == Some("duration") =>
        {
            ("duration".into(), None)
        }
        Some(Value::String(t)) => (t.clone(), None),
        Some(Value::Array(ts)) => {
            let t: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            (t.join(" or "), None)
        }
        _ => ("value".into(), None),
    }
}

fn resolve(reference: &str, defs: &Value) -> Value {
    reference
        .rsplit('/')
        .next()
        .and_then(|name| defs.get(name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The values of a string enum with their meanings: "`auto` (try each)".
fn enum_variants(prop: &Value, defs: &Value) -> Option<Vec<String>> {
    let def = match prop.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(r, defs),
        None => prop.clone(),
    };
    let list = def.get("oneOf").and_then(Value::as_array)?;
    list.iter()
        .map(|v| {
            let value = v.get("const").and_then(Value::as_str)?;
            Some(match v.get("description").and_then(Value::as_str) {
                Some(d) => format!("`{value}` ({})", d.trim_end_matches('.')),
                None => format!("`{value}`"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options of a pretend component.
    #[derive(serde::Deserialize, Serialize, JsonSchema, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        /// Names to select.
        prefixes: Vec<String>,
        /// How it attaches.
        mode: Mode,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                prefixes: vec!["eth".into()],
                mode: Mode::Auto,
            }
        }
    }

    #[derive(serde::Deserialize, Serialize, JsonSchema, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        /// Try each.
        Auto,
        /// Only this one.
        One,
    }

    fn yaml(s: &str) -> serde_yaml::Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn sections_split_common_keys_from_options() {
        let (c, o) = parse::<Example>("probes.x", None, Keys::Probe).unwrap();
        assert_eq!(c, Common::default());
        assert_eq!(o, Example::default());

        let v = yaml("enabled: false\nprefixes: [veth]\nmode: one\n");
        let (c, o) = parse::<Example>("probes.x", Some(&v), Keys::Probe).unwrap();
        assert_eq!(c.enabled, Some(false));
        assert_eq!(o.prefixes, ["veth"]);
        assert_eq!(o.mode, Mode::One);

        let v = yaml("interval: 5m\n");
        let (c, _) = parse::<NoOptions>("checks.X", Some(&v), Keys::Check).unwrap();
        assert_eq!(c.interval, Some(Duration::from_secs(300)));

        for (text, keys, want) in [
            ("interval: 5m\n", Keys::Probe, "probes.x.interval"),
            ("interval: 0s\n", Keys::Check, "probes.x.interval"),
            ("enabled: maybe\n", Keys::Probe, "probes.x.enabled"),
            ("prefix: [a]\n", Keys::Probe, "unknown field `prefix`"),
            (
                "mode: kprobe\n",
                Keys::Probe,
                "probes.x.mode: unknown variant `kprobe`",
            ),
            (
                "prefixes: 5\n",
                Keys::Probe,
                "probes.x.prefixes: invalid type",
            ),
            ("[1]\n", Keys::Probe, "must be a mapping"),
        ] {
            let e = parse::<Example>("probes.x", Some(&yaml(text)), keys)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn reference_lists_keys_types_defaults_and_variants() {
        let md = reference(
            "probes.x",
            &schemars::schema_for!(Example),
            Some(Keys::Probe),
        );
        assert!(md.contains("| `enabled` | boolean | `true` | Read this probe. |"));
        assert!(md.contains("| `prefixes` | list of string | `[\"eth\"]` | Names to select. |"));
        assert!(
            md.contains("`auto` (Try each); `one` (Only this one)"),
            "{md}"
        );
    }
}
