//! Schemas of embedded upstream types, trimmed so the CRD stays small enough to apply.

/// Remove every `description` below `value`, keeping structure, types and validation. Used for
/// embedded upstream types whose documentation would make the CRD too large to apply.
pub fn strip_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("description");
            for (key, v) in map.iter_mut() {
                if key == "properties" {
                    // Children of `properties` are field names: a field called `description`
                    // is a field, not documentation.
                    if let serde_json::Value::Object(fields) = v {
                        fields.values_mut().for_each(strip_descriptions);
                    }
                } else {
                    strip_descriptions(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// The schema of `T` with [`strip_descriptions`] applied.
pub fn schema_without_descriptions<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    let mut value = serde_json::Value::from(generator.subschema_for::<T>());
    strip_descriptions(&mut value);
    schemars::Schema::try_from(value).expect("a schema stays a schema without descriptions")
}

#[cfg(test)]
mod tests {
    use super::strip_descriptions;

    #[test]
    fn a_field_named_description_survives() {
        let mut v = serde_json::json!({
            "description": "doc",
            "properties": {"description": {"type": "string", "description": "doc"}}
        });
        strip_descriptions(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"properties": {"description": {"type": "string"}}})
        );
    }
}
