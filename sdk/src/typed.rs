//! Typed records in and out: a [`TypedNode`] takes each record as its own `serde` type and
//! returns another; a record that does not fit fails alone, with an error naming the field.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Info, Node, Value, decode};

/// A node plugin over typed records: each record is decoded into [`TypedNode::In`], transformed,
/// and the [`TypedNode::Out`] serialized back.
///
/// Every `TypedNode` is a [`Node`] (export it with [`crate::export_node!`], test it with
/// [`crate::testing::run_node`]). A record that does not fit `In` fails with
/// `` field `age`: invalid type: string, expected u32 `` (the value is never quoted); the
/// other records go on.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use trellis_sdk::{Info, TypedNode, json, testing};
///
/// #[derive(Deserialize)]
/// struct Person { first: String, last: String }
///
/// #[derive(Serialize)]
/// struct Named { name: String }
///
/// struct FullName;
///
/// impl TypedNode for FullName {
///     type In = Person;
///     type Out = Named;
///
///     fn info() -> Info {
///         Info::new("full-name", "0.1.0")
///     }
///
///     fn transform(person: Person) -> Result<Named, String> {
///         Ok(Named { name: format!("{} {}", person.first, person.last) })
///     }
/// }
///
/// let out = testing::run_node::<FullName>(
///     vec![json!({"first": "Ada", "last": "Lovelace"}), json!({"first": "Alan"})],
///     json!({}),
/// );
/// assert_eq!(out[0], Ok(json!({"name": "Ada Lovelace"})));
/// assert_eq!(out[1], Err("field `last` is missing".to_owned()));
/// ```
///
/// Records are decoded straight from their JSON text (no [`Value`] in between). For work across
/// the records of a batch, implement [`Node`] and decode with [`decode::from_value`] in
/// [`Node::transform_batch`]; for renaming or adding a few fields of large records,
/// [`crate::Record`] is faster still.
pub trait TypedNode {
    /// A record as the plugin reads it.
    type In: DeserializeOwned;
    /// A record as the plugin writes it (it should serialize to a JSON object).
    type Out: Serialize;

    /// Name, version, capabilities, config schema.
    fn info() -> Info;

    /// Transforms one record; an `Err` fails that record only.
    fn transform(input: Self::In) -> Result<Self::Out, String>;
}

impl<T: TypedNode> Node for T {
    fn info() -> Info {
        <T as TypedNode>::info()
    }

    fn transform(record: Value) -> Result<Value, String> {
        let input = decode::from_value::<T::In>(&record)?;
        let output = <T as TypedNode>::transform(input)?;
        serde_json::to_value(output).map_err(output_error)
    }

    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>> {
        records
            .iter()
            .map(|text| transform_text::<T>(text))
            .collect()
    }
}

/// One record through a [`TypedNode`], JSON text in and out.
fn transform_text<T: TypedNode>(text: &str) -> Result<String, String> {
    let input = decode::from_str::<T::In>(text).map_err(|e| {
        if e.is_not_json() {
            format!("the record is {e}")
        } else {
            e.to_string()
        }
    })?;
    let output = T::transform(input)?;
    serde_json::to_string(&output).map_err(output_error)
}

fn output_error(e: serde_json::Error) -> String {
    format!("the plugin's output cannot be written as JSON: {e}")
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{json, testing};

    #[derive(Deserialize)]
    struct Order {
        id: u64,
        amount: f64,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Serialize)]
    struct Priced {
        id: u64,
        amount_with_tax: f64,
        tag_count: usize,
    }

    struct Tax;

    impl TypedNode for Tax {
        type In = Order;
        type Out = Priced;

        fn info() -> Info {
            Info::new("tax", "0.1.0")
        }

        fn transform(order: Order) -> Result<Priced, String> {
            if order.amount < 0.0 {
                return Err(format!("order {}: negative amount", order.id));
            }
            Ok(Priced {
                id: order.id,
                amount_with_tax: order.amount * 1.5,
                tag_count: order.tags.len(),
            })
        }
    }

    #[test]
    fn records_in_and_out_as_types() {
        let out = testing::run_node::<Tax>(
            vec![
                json!({"id": 1, "amount": 10, "tags": ["a", "b"]}),
                json!({"id": 2, "amount": "s3cr3t"}),
                json!({"id": 3, "amount": 1, "tags": [7]}),
                json!({"id": 4, "amount": -1}),
                json!({"amount": 1}),
                json!("not an object"),
                json!({"id": 5, "amount": 2}),
            ],
            json!({}),
        );
        assert_eq!(
            out,
            vec![
                Ok(json!({"id": 1, "amount_with_tax": 15.0, "tag_count": 2})),
                Err("field `amount`: invalid type: string, expected f64".to_owned()),
                Err("field `tags[0]`: invalid type: integer, expected a string".to_owned()),
                Err("order 4: negative amount".to_owned()),
                Err("field `id` is missing".to_owned()),
                Err("invalid type: string, expected struct Order".to_owned()),
                Ok(json!({"id": 5, "amount_with_tax": 3.0, "tag_count": 0})),
            ]
        );
    }

    #[test]
    fn the_value_path_gives_the_same_answers() {
        assert_eq!(
            <Tax as Node>::transform(json!({"id": 1, "amount": 2})),
            Ok(json!({"id": 1, "amount_with_tax": 3.0, "tag_count": 0}))
        );
        assert_eq!(
            <Tax as Node>::transform(json!({"id": "x", "amount": 2})),
            Err("field `id`: invalid type: string, expected u64".to_owned())
        );
    }

    #[test]
    fn text_that_is_not_json_fails_that_record() {
        let out = Tax::transform_json(vec!["{\"id\": 1,".into(), r#"{"id":1,"amount":0}"#.into()]);
        assert!(
            out[0]
                .as_ref()
                .unwrap_err()
                .starts_with("the record is not JSON: ")
        );
        assert!(out[1].is_ok());
    }
}
