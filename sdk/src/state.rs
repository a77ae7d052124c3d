//! Plugin state set up once per instance ([`state`]): a parsed config, a compiled pattern, a
//! lookup table, built on first use instead of for every record.

use std::any::{Any, TypeId};
use std::cell::RefCell;

thread_local! {
    /// This instance's states, one per type. The values are leaked: an instance is thrown away
    /// whole after its call, and in native tests each instance is small and short-lived.
    static STATES: RefCell<Vec<(TypeId, &'static dyn Any)>> = const { RefCell::new(Vec::new()) };
}

/// This instance's value of type `S`, made by `init` the first time it is asked for.
///
/// **Once per instance means once per call today**: the host makes a fresh instance of the
/// plugin for every call (one batch of records, or of values to mask), so `init` runs at most
/// once per batch and nothing carries over to the next one. Use it for work that every record of
/// a batch would otherwise repeat, such as [`crate::config::parse`]:
///
/// ```
/// use serde::Deserialize;
/// use trellis_sdk::{ConfigError, config, json, state, testing};
///
/// #[derive(Deserialize)]
/// struct Settings { suffix: String }
///
/// fn settings() -> Result<&'static Settings, ConfigError> {
///     state(config::parse::<Settings>).as_ref().map_err(Clone::clone)
/// }
///
/// testing::set_config(json!({"suffix": "!"}));
/// assert_eq!(settings().unwrap().suffix, "!");
/// testing::set_config(json!({"suffix": "?"}));
/// assert_eq!(settings().unwrap().suffix, "!"); // still the first instance's value
/// ```
///
/// There is one value per type, so give each kind of state its own type (a `Result` of a config
/// struct is a type of its own). `init` may ask for other states, but not for `S` itself.
///
/// In native tests every thread is its own instance, and [`crate::testing::run_node`] (or
/// [`crate::testing::new_instance`]) starts a fresh one.
pub fn state<S: 'static>(init: impl FnOnce() -> S) -> &'static S {
    if let Some(found) = lookup::<S>() {
        return found;
    }
    // `init` runs without the borrow held, so it may ask for other states.
    let made: &'static S = Box::leak(Box::new(init()));
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        match states.iter().find(|(id, _)| *id == TypeId::of::<S>()) {
            Some((_, found)) => found.downcast_ref::<S>().expect("state of its own type"),
            None => {
                states.push((TypeId::of::<S>(), made));
                made
            }
        }
    })
}

fn lookup<S: 'static>() -> Option<&'static S> {
    STATES.with(|states| {
        states
            .borrow()
            .iter()
            .find(|(id, _)| *id == TypeId::of::<S>())
            .map(|(_, found)| found.downcast_ref::<S>().expect("state of its own type"))
    })
}

/// Forgets every state of this thread, as a new instance would start.
pub(crate) fn new_instance() {
    STATES.with(|states| states.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn made_once_per_type_until_a_new_instance() {
        thread_local!(static CALLS: Cell<u32> = const { Cell::new(0) });
        let make = || {
            CALLS.with(|c| c.set(c.get() + 1));
            vec![1, 2, 3]
        };
        assert_eq!(state(make), &vec![1, 2, 3]);
        assert_eq!(state::<Vec<i32>>(|| unreachable!()), &vec![1, 2, 3]);
        assert_eq!(*state(|| "other type"), "other type");
        assert_eq!(CALLS.with(Cell::get), 1);
        new_instance();
        assert_eq!(state(make).len(), 3);
        assert_eq!(CALLS.with(Cell::get), 2);
    }

    #[test]
    fn init_may_ask_for_another_state() {
        struct Doubled(u32);
        let doubled = state(|| Doubled(state(|| 21u32) * 2));
        assert_eq!(doubled.0, 42);
        assert_eq!(*state::<u32>(|| unreachable!()), 21);
    }
}
