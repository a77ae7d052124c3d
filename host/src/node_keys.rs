//! Unknown and misplaced keys in a node's config, for every node type (SQL, pool operations,
//! vector): a typo gets a did-you-mean; a key of the Python SDK's nodes that Trellis handles
//! elsewhere (a connection string, a pool size) says where it goes. A key is never ignored.

use serde_json::{Map, Value};

use crate::suggest::did_you_mean;

/// Where a seed key goes instead, or `None` when `key` is not one.
fn elsewhere(key: &str) -> Option<&'static str> {
    Some(match key {
        "connection_string" | "host" | "port" | "user" | "username" | "password"
        | "database_type" | "db_type" => {
            "connections are configured once, in `[databases.NAME]` of trellis.toml (a `url`, or `type`/`host`/`port`/…), so secrets stay out of workflow files; name the database with `database = \"NAME\"` beside `config`"
        }
        "database" => {
            "the database is named beside `config`, not in it: `database = \"NAME\"` in the node's table"
        }
        "pool_size" | "max_pool_size" | "min_pool_size" | "pool_timeout" => {
            "pool sizes are `min_connections` / `max_connections` in `[databases.NAME]` of trellis.toml"
        }
        _ => return None,
    })
}

/// One message per key of `config` that is not in `known` (in key order): `` unknown key `x` ``
/// with a did-you-mean, or where a seed key goes.
pub(crate) fn unknown(config: &Map<String, Value>, known: &[&str]) -> Vec<String> {
    config
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| match elsewhere(k) {
            Some(place) => format!("`{k}` is not a node setting: {place}"),
            None => match did_you_mean(k, known) {
                Some(m) => format!("unknown key `{k}`: did you mean `{m}`?"),
                None => format!("unknown key `{k}`: the keys are `{}`", known.join("`, `")),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typos_and_seed_keys_are_named() {
        let config = json!({"query": "x", "fetchmode": "one", "pool_size": 5, "zzz": 1});
        let problems = unknown(config.as_object().unwrap(), &["query", "fetch_mode"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0],
            "unknown key `fetchmode`: did you mean `fetch_mode`?"
        );
        assert!(
            problems[1]
                .starts_with("`pool_size` is not a node setting: pool sizes are `min_connections`")
        );
        assert_eq!(
            problems[2],
            "unknown key `zzz`: the keys are `query`, `fetch_mode`"
        );
    }
}
