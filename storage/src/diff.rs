//! Where two JSON documents differ: how a study refuses a config or inputs other than its own, naming the
//! fields (`strategy.population_size`, `inputs.data[0]["austen-emma.txt"]` ...).

use serde_json::Value;

/// The paths (`a.b[2].c`) at which two JSON values differ, depth first.
pub fn json_diff(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => walk(&join(k), u, v, out),
                    _ => out.push(join(k)),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a != b => out.push(if path.is_empty() { "(root)".into() } else { path.to_string() }),
        _ => {}
    }
}

/// The first few differing paths as one phrase: `a.b, c and 4 more`.
pub fn summary(diffs: &[String]) -> String {
    let shown: Vec<&str> = diffs.iter().take(6).map(String::as_str).collect();
    let more = if diffs.len() > shown.len() { format!(" and {} more", diffs.len() - shown.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_differing_paths() {
        let a = serde_json::json!({"x": 1, "y": {"z": [1, 2]}, "only_a": true});
        let b = serde_json::json!({"x": 1, "y": {"z": [1, 3]}});
        assert_eq!(json_diff(&a, &b), vec!["only_a".to_string(), "y.z[1]".to_string()]);
        assert!(json_diff(&a, &a).is_empty());
        let many: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        assert_eq!(summary(&many), "f0, f1, f2, f3, f4, f5 and 2 more");
    }
}
