//! The user a decision is made for (Kailash's `UserContext`), its fingerprint, and the Cedar
//! entities built from it: the user with its attribute slots, its roles as parents, and its
//! department as a parent chain (`finance.analysis` → `finance`).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityUid, RestrictedExpression};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::compile::Slot;
use super::derive::lookup;

/// `{"user_id", "tenant_id", "email", "roles": […], "attributes": {…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserContext {
    /// The user's id.
    pub user_id: String,
    /// The tenant.
    #[serde(default)]
    pub tenant_id: String,
    /// The e-mail address.
    #[serde(default)]
    pub email: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Free-form attributes (`department`, `security_clearance`, `region`, …).
    #[serde(default)]
    pub attributes: serde_json::Map<String, Value>,
}

/// A user prepared for decisions: its JSON view and a fingerprint of everything in it. Cheap
/// to clone (a run's parts each hold one).
#[derive(Debug, Clone)]
pub struct PreparedUser {
    inner: Arc<Prepared>,
}

/// What a [`PreparedUser`] shares between its clones.
#[derive(Debug)]
struct Prepared {
    context: UserContext,
    view: Value,
    fingerprint: u128,
}

impl PreparedUser {
    /// Prepares `context`; do it once per request (or once per user) and reuse it.
    pub fn new(context: UserContext) -> PreparedUser {
        let view = crate::json::object([
            ("user_id", context.user_id.clone().into()),
            ("tenant_id", context.tenant_id.clone().into()),
            ("email", context.email.clone().into()),
            ("roles", context.roles.clone().into()),
            ("attributes", Value::Object(context.attributes.clone())),
        ]);
        // The text keeps the attributes in the order they came in (serde_json's
        // `preserve_order` is on for the whole build: cedar-policy asks for it), so one user
        // may have two fingerprints; that costs a cache entry, never a wrong decision, since two
        // users with different views never share a text.
        let digest = Sha256::digest(crate::json::to_string(&view).as_bytes());
        let fingerprint = u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"));
        PreparedUser {
            inner: Arc::new(Prepared {
                context,
                view,
                fingerprint,
            }),
        }
    }

    /// The user as given.
    pub fn context(&self) -> &UserContext {
        &self.inner.context
    }

    /// `{"user_id", "tenant_id", "email", "roles", "attributes"}`, what `user.…` paths read.
    pub fn view(&self) -> &Value {
        &self.inner.view
    }

    /// A fingerprint of the id, tenant, e-mail, roles and every attribute.
    pub fn fingerprint(&self) -> u128 {
        self.inner.fingerprint
    }

    /// `Trellis::User::"id"`.
    pub fn uid(&self) -> EntityUid {
        uid("User", &self.inner.context.user_id)
    }

    /// The user, role and department entities, with `slots` projected onto the user.
    pub fn entities(&self, slots: &[Slot]) -> Result<Entities, String> {
        let mut attrs = HashMap::new();
        attrs.insert(
            "user_id".to_owned(),
            RestrictedExpression::new_string(self.inner.context.user_id.clone()),
        );
        attrs.insert(
            "tenant_id".to_owned(),
            RestrictedExpression::new_string(self.inner.context.tenant_id.clone()),
        );
        attrs.insert(
            "email".to_owned(),
            RestrictedExpression::new_string(self.inner.context.email.clone()),
        );
        let empty = Value::Null;
        for slot in slots.iter().filter(|s| !s.path.is_runtime()) {
            if let Some(v) = slot.project(lookup(&slot.path, &self.inner.view, &empty)) {
                attrs.insert(slot.name(), v);
            }
        }
        let mut parents = HashSet::new();
        let mut entities = Vec::new();
        for role in &self.inner.context.roles {
            let r = uid("Role", role);
            if parents.insert(r.clone()) {
                entities.push(Entity::new_no_attrs(r, HashSet::new()));
            }
        }
        if let Some(Value::String(dept)) = self.inner.context.attributes.get("department") {
            let chain = department_chain(dept);
            if let Some(first) = chain.first() {
                parents.insert(uid("Department", first));
            }
            for (i, d) in chain.iter().enumerate() {
                let up = chain
                    .get(i + 1)
                    .map(|p| uid("Department", p))
                    .into_iter()
                    .collect();
                entities.push(Entity::new_no_attrs(uid("Department", d), up));
            }
        }
        let user = Entity::new(self.uid(), attrs, parents).map_err(|e| e.to_string())?;
        entities.push(user);
        Entities::from_entities(entities, None).map_err(|e| e.to_string())
    }
}

/// `a.b.c` → `["a.b.c", "a.b", "a"]`: the department and every ancestor, nearest first.
pub fn department_chain(dept: &str) -> Vec<String> {
    let mut chain = vec![dept.to_owned()];
    for (i, c) in dept.char_indices().rev() {
        if c == '.' {
            chain.push(dept[..i].to_owned());
        }
    }
    chain.dedup();
    chain
}

/// `Trellis::TYPE::"id"`. Type names are parsed once: parsing one costs microseconds.
pub(crate) fn uid(ty: &str, id: &str) -> EntityUid {
    use std::sync::LazyLock;
    static TYPES: LazyLock<HashMap<&'static str, cedar_policy::EntityTypeName>> =
        LazyLock::new(|| {
            ["User", "Role", "Department", "Node", "Workflow", "Action"]
                .into_iter()
                .map(|t| {
                    let name = cedar_policy::EntityTypeName::from_str(&format!("Trellis::{t}"))
                        .expect("the Trellis entity type names are valid");
                    (t, name)
                })
                .collect()
        });
    let name = TYPES.get(ty).cloned().unwrap_or_else(|| {
        cedar_policy::EntityTypeName::from_str(&format!("Trellis::{ty}"))
            .expect("entity type names used by the engine are valid")
    });
    EntityUid::from_type_name_and_id(name, cedar_policy::EntityId::new(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn department_chains_walk_up_at_dots() {
        assert_eq!(
            department_chain("finance.analysis.q3"),
            ["finance.analysis.q3", "finance.analysis", "finance"]
        );
        assert_eq!(department_chain("hr"), ["hr"]);
    }

    #[test]
    fn fingerprints_cover_attributes_and_roles() {
        let base: UserContext = serde_json::from_value(
            serde_json::json!({"user_id": "u", "roles": ["a"], "attributes": {"x": 1}}),
        )
        .unwrap();
        let mut other = base.clone();
        other.attributes.insert("x".into(), serde_json::json!(2));
        let mut roles = base.clone();
        roles.roles.push("b".into());
        let fp = |u: &UserContext| PreparedUser::new(u.clone()).fingerprint();
        assert_ne!(fp(&base), fp(&other));
        assert_ne!(fp(&base), fp(&roles));
        assert_eq!(fp(&base), fp(&base.clone()));
    }

    #[test]
    fn odd_ids_make_valid_entity_uids() {
        let _ = uid("User", "a\"b\\c\n");
    }
}
