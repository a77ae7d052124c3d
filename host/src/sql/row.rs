//! A result row as the driver decoded it: its values in column order, and the column names its
//! result set shares. No JSON object is built for it unless a caller asks for one
//! ([`Row::into_map`]): reading a column by name needs none.

use std::ops::Index;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One row of a statement's result.
///
/// Two columns of one name read as the last of them, which a JSON object of the row keeps (in
/// the first one's place), so [`Row::get`] and [`Row::into_map`] agree.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// A row of `values`, one for each of `names`.
    pub(crate) fn new(names: Arc<[String]>, values: Vec<Value>) -> Row {
        debug_assert_eq!(names.len(), values.len());
        Row { names, values }
    }

    /// Where the column named `name` is: the last of that name.
    fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().rposition(|n| n == name)
    }

    /// The value of the column named `name`, if the row has one.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(self.position(name)?)
    }

    /// Takes the value of the column named `name` out of the row (leaving `null`).
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let at = self.position(name)?;
        self.values.get_mut(at).map(Value::take)
    }

    /// The row as a JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        let mut map = Map::with_capacity(self.values.len());
        for (name, value) in self.names.iter().zip(self.values) {
            map.insert(name.clone(), value);
        }
        map
    }

    /// Rows as JSON objects, in order. The rows of one result set share their names, so the
    /// first row's object, its values left `null`, is copied for each row and filled in: a
    /// copy keeps each name's hash, where inserting the names again hashes every one of them
    /// (SipHash, serde_json's hasher) for every row.
    pub fn into_objects(rows: Vec<Row>) -> Vec<Value> {
        let mut out = Vec::with_capacity(rows.len());
        // The names the template was made for, and the template: none while the names repeat
        // (each such row is made on its own, as `into_map` makes it).
        let mut names: Option<Arc<[String]>> = None;
        let mut empty: Option<Map<String, Value>> = None;
        for row in rows {
            let same = names
                .as_ref()
                .is_some_and(|n| Arc::ptr_eq(n, &row.names) || *n == row.names);
            if !same {
                let n = &row.names;
                let unique = !(1..n.len()).any(|i| n[..i].contains(&n[i]));
                empty = unique.then(|| {
                    let mut map = Map::with_capacity(n.len());
                    for name in n.iter() {
                        map.insert(name.clone(), Value::Null);
                    }
                    map
                });
                names = Some(row.names.clone());
            }
            match &empty {
                Some(empty) => {
                    let mut map = empty.clone();
                    for (slot, value) in map.values_mut().zip(row.values) {
                        *slot = value;
                    }
                    out.push(Value::Object(map));
                }
                None => out.push(Value::Object(row.into_map())),
            }
        }
        out
    }

    /// The row as a JSON object, copied.
    pub fn to_map(&self) -> Map<String, Value> {
        self.clone().into_map()
    }
}

/// `row["name"]`: the column's value, or `null` when the row has no such column (as indexing a
/// JSON object gives).
impl Index<&str> for Row {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

/// A row equals the JSON object it reads as.
impl PartialEq<Map<String, Value>> for Row {
    fn eq(&self, other: &Map<String, Value>) -> bool {
        self.to_map() == *other
    }
}

/// Written as the JSON object it reads as.
impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let names = &self.names;
        if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
            return self.to_map().serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (name, value) in names.iter().zip(&self.values) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl From<Row> for Value {
    fn from(row: Row) -> Value {
        Value::Object(row.into_map())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(names: &[&str], values: Vec<Value>) -> Row {
        Row::new(names.iter().map(|n| (*n).to_owned()).collect(), values)
    }

    #[test]
    fn reads_by_name_as_its_json_object_does() {
        let r = row(&["a", "b"], vec![json!(1), json!("x")]);
        assert_eq!(r["a"], json!(1));
        assert_eq!(r.get("b"), Some(&json!("x")));
        assert_eq!(r["missing"], Value::Null);
        assert_eq!(r.get("missing"), None);
        assert_eq!(Value::from(r.clone()), json!({"a": 1, "b": "x"}));
        assert_eq!(r, *json!({"a": 1, "b": "x"}).as_object().unwrap());
    }

    #[test]
    fn rows_become_the_objects_each_would_alone() {
        let names: Arc<[String]> = ["a", "b"].map(str::to_owned).into();
        let other: Arc<[String]> = ["a", "b", "a"].map(str::to_owned).into();
        let copy: Arc<[String]> = ["a", "b"].map(str::to_owned).into();
        let rows = vec![
            Row::new(names.clone(), vec![json!(1), json!("x")]),
            Row::new(names.clone(), vec![json!(null), json!([2])]),
            // Another result's names, repeating one; then the first names again, as a copy.
            Row::new(other.clone(), vec![json!(1), json!(2), json!(3)]),
            Row::new(other, vec![json!(4), json!(5), json!(6)]),
            Row::new(copy, vec![json!({"c": 1}), json!(false)]),
            Row::new(names, vec![json!(7), json!(8)]),
        ];
        let alone: Vec<Value> = rows.iter().cloned().map(Value::from).collect();
        let objects = Row::into_objects(rows);
        assert_eq!(objects, alone);
        // Field order too, which `==` on maps does not compare.
        assert_eq!(
            serde_json::to_string(&objects).unwrap(),
            serde_json::to_string(&alone).unwrap()
        );
        assert_eq!(
            objects[2],
            json!({"a": 3, "b": 2}),
            "a repeated name keeps its last value in the first one's place"
        );
        assert!(Row::into_objects(Vec::new()).is_empty());
    }

    #[test]
    fn a_repeated_name_reads_as_its_last_column_in_the_first_ones_place() {
        let r = row(&["a", "b", "a"], vec![json!(1), json!(2), json!(3)]);
        assert_eq!(r["a"], json!(3));
        let map = r.into_map();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(map["a"], json!(3));
    }

    #[test]
    fn serializes_as_its_json_object() {
        let r = row(&["a", "b"], vec![json!(1), json!("x")]);
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"a":1,"b":"x"}"#);
        let r = row(&["a", "b", "a"], vec![json!(1), json!(2), json!(3)]);
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"a":3,"b":2}"#);
    }
}
