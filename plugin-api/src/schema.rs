//! JSON Schemas of a task's arguments and result, for `billiard-host
//! inspect --json` (`abi::PluginMod::task_schema`).
//!
//! `#[task]` derives them at build time from the task's own types through
//! schemars: the arguments as the tuple a job's JSON array decodes into
//! (`Vec<u8>` as [`codec::Bytes`], as the glue decodes it), the result as the
//! `T` of `T` or `Result<T, E>`. A type without `JsonSchema` yields no schema
//! (`null`) instead of a compile error: the generated code picks the schema
//! by autoref specialization ([`SchemaOf`]), as `glue::ErrSlot` picks an
//! error's conversion, so every plugin written before schemas existed still
//! builds.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::RVec;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use crate::codec;

/// What `#[task]` generates per task: its argument and result schemas
/// (`None` where a type has no `JsonSchema`).
pub type SchemaFn = fn() -> (Option<Value>, Option<Value>);

/// The [`SchemaFn`] of a task that says nothing (a hand-written `Task`).
pub fn no_schema() -> (Option<Value>, Option<Value>) {
    (None, None)
}

/// The schema of a task that takes no arguments: the empty array `[]`
/// (what `codec::decode_no_args` accepts in JSON).
pub fn no_args() -> Option<Value> {
    Some(serde_json::json!({
        "$schema": schemars::generate::SchemaSettings::draft2020_12().meta_schema,
        "type": "array",
        "maxItems": 0
    }))
}

/// The type whose schema is wanted; see [`ViaJsonSchema`] and
/// [`ViaNoSchema`]. The generated code calls `(&SchemaOf::<T>::new()).schema()`:
/// method resolution takes [`ViaJsonSchema`] when `T: JsonSchema` and
/// [`ViaNoSchema`] (one auto-reference further) otherwise.
pub struct SchemaOf<T>(PhantomData<fn() -> T>);

impl<T> SchemaOf<T> {
    /// A marker for `T`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> SchemaOf<T> {
        SchemaOf(PhantomData)
    }
}

/// See [`SchemaOf`]: a type with a schema.
pub trait ViaJsonSchema {
    /// The schema of the type, as a JSON value.
    fn schema(&self) -> Option<Value>;
}

impl<T: JsonSchema> ViaJsonSchema for SchemaOf<T> {
    fn schema(&self) -> Option<Value> {
        Some(schemars::schema_for!(T).to_value())
    }
}

/// See [`SchemaOf`]: a type without one.
pub trait ViaNoSchema {
    /// `None`: the type does not implement `JsonSchema`.
    fn schema(&self) -> Option<Value>;
}

impl<T> ViaNoSchema for &SchemaOf<T> {
    fn schema(&self) -> Option<Value> {
        None
    }
}

/// A byte string in JSON, as [`codec::Bytes`] reads it: an array of
/// numbers 0..=255, a string (its UTF-8 bytes), or `{"$bytes": "<base64>"}`.
impl JsonSchema for codec::Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bytes".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A byte string: an array of numbers 0..=255, a string (its UTF-8 bytes), or {\"$bytes\": \"<base64>\"}",
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {codec::BYTES_KEY: {"type": "string", "contentEncoding": "base64"}},
                    "required": [codec::BYTES_KEY],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// The `task_schema` entry of a plugin: writes task `task`'s schemas to
/// `out` as one JSON object `{"args": <schema or null>, "result": <schema
/// or null>}`; nothing (`out` empty) for an unknown task, or when a type's
/// own `JsonSchema` code panicked (the panic stays in the plugin).
pub fn task_schema(schemas: &[SchemaFn], task: u32, out: &mut RVec<u8>) {
    out.clear();
    let Some(f) = usize::try_from(task).ok().and_then(|i| schemas.get(i)) else {
        return;
    };
    let text = catch_unwind(AssertUnwindSafe(|| {
        let (args, result) = f();
        serde_json::to_vec(&serde_json::json!({ "args": args, "result": result })).ok()
    }));
    if let Ok(Some(text)) = text {
        out.extend_from_copy_slice(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    struct NoSchema;

    #[test]
    // The borrow is what picks the specialization, as in generated code.
    #[allow(clippy::needless_borrow)]
    fn a_type_without_a_schema_has_none() {
        #[allow(unused_imports)]
        use super::{ViaJsonSchema as _, ViaNoSchema as _};
        assert!((&SchemaOf::<(u64, String)>::new()).schema().is_some());
        assert!((&SchemaOf::<(u64, NoSchema)>::new()).schema().is_none());
        let bytes = (&SchemaOf::<(codec::Bytes,)>::new()).schema().unwrap();
        assert_eq!(bytes["prefixItems"][0]["anyOf"][2]["required"][0], "$bytes");
        let none = no_args().unwrap();
        assert_eq!(
            (&none["type"], &none["maxItems"]),
            (&"array".into(), &0.into())
        );
    }
}
