//! JSON objects built by moving their values in. `serde_json::json!` turns every value it is
//! given into a new one through the serializer (`to_value(&v)`), a deep copy: a node's rows
//! wrapped in its output object would be copied whole.

use serde_json::{Map, Value};

/// The object of `fields`, in their order, each value moved in (a name given twice keeps the
/// last value, in the first one's place, as `json!` does).
pub(crate) fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut map = Map::with_capacity(N);
    for (name, value) in fields {
        map.insert(name.to_owned(), value);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    #[test]
    fn object_is_what_json_builds() {
        let rows = json!([{"a": 1, "b": [true, null]}, {"a": "x"}]);
        let built = super::object([
            ("data", rows.clone()),
            ("count", 2.into()),
            ("plugin", "p@1".into()),
        ]);
        assert_eq!(built, json!({"data": rows, "count": 2, "plugin": "p@1"}));
        let keys: Vec<&str> = built
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["data", "count", "plugin"]);
        assert_eq!(super::object([]), Value::Object(Default::default()));
    }
}
