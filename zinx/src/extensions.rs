//! Typed key/value storage: connection properties and per-request values.
//!
//! Values are keyed by their type, like `http::Extensions`: define a small newtype
//! per value (`struct PlayerId(u32)`) instead of Zinx's string keys and
//! `interface{}` values, and the compiler checks every read.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;

type Map = HashMap<TypeId, Box<dyn Any + Send + Sync>>;

/// A map from a type to one value of that type. Empty maps allocate nothing.
#[derive(Default)]
pub struct Extensions {
    map: Option<Box<Map>>,
}

impl Extensions {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Extensions::default()
    }

    /// Stores `value`, returning the previous value of its type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        self.map
            .get_or_insert_with(Box::default)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if stored.
    #[must_use]
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map
            .as_ref()?
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref())
    }

    /// The value of type `T`, mutably, if stored.
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.map
            .as_mut()?
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| v.downcast_mut())
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.map
            .as_mut()?
            .remove(&TypeId::of::<T>())
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// Number of stored values.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True when nothing is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct A(u8);

    #[test]
    fn typed_insert_get_remove() {
        let mut ext = Extensions::new();
        assert!(ext.is_empty());
        assert_eq!(ext.insert(A(1)), None);
        assert_eq!(ext.insert(7u64), None);
        assert_eq!(ext.insert(A(2)), Some(A(1)));
        ext.get_mut::<A>().unwrap().0 += 1;
        assert_eq!(ext.get::<A>(), Some(&A(3)));
        assert_eq!(ext.len(), 2);
        assert_eq!(ext.remove::<A>(), Some(A(3)));
        assert_eq!(ext.get::<A>(), None);
        assert_eq!(ext.get::<u64>(), Some(&7));
    }
}

/// Application state by type, shared by every connection of a server (see
/// [`Router::with_state`](crate::Router::with_state)): cheap to clone, read-only.
#[derive(Clone, Default)]
pub(crate) struct States {
    map: HashMap<TypeId, std::sync::Arc<dyn Any + Send + Sync>>,
}

impl States {
    /// Adds (or replaces) the state of type `T`.
    pub(crate) fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map
            .insert(TypeId::of::<T>(), std::sync::Arc::new(value));
    }

    /// The state of type `T`, if there is one.
    pub(crate) fn get<T: Any + Send + Sync>(&self) -> Option<std::sync::Arc<T>> {
        self.map.get(&TypeId::of::<T>())?.clone().downcast().ok()
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("len", &self.map.len())
            .finish()
    }
}
