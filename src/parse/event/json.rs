//! The serde_json path for any JSON line the scanner (`scan.rs`) does not fully understand: a
//! hand-written `DeserializeSeed` that looks only at the configured keys and skips every other
//! value as `IgnoredAny` without building it, feeding the same `Scratch::put` as the scanner.

use super::*;

/// Reads the top-level JSON object, handing the wanted values to the scratch buffers.
pub(super) struct ObjectSeed<'p> {
    pub(super) names: &'p KeyTable,
    pub(super) scratch: &'p mut Scratch,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.names))? {
            match key {
                Some((field, alt)) => map.next_value_seed(ValueSeed {
                    field,
                    alt,
                    scratch: &mut *self.scratch,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Matches a key against the configured names without building it.
pub(super) struct KeySeed<'p>(&'p KeyTable);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<(Field, usize)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<(Field, usize)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.lookup(key.as_bytes()))
    }
}

/// Reads one wanted value, of whatever JSON type, straight into the scratch buffers.
pub(super) struct ValueSeed<'p> {
    pub(super) field: Field,
    pub(super) alt: usize,
    pub(super) scratch: &'p mut Scratch,
}

impl ValueSeed<'_> {
    pub(super) fn put(self, value: Scalar<'_>) {
        self.scratch.put(self.field, self.alt, value);
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.put(Scalar::Str(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.put(Scalar::U64(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.put(Scalar::I64(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.put(Scalar::F64(v));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.put(Scalar::Other);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.put(Scalar::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.put(Scalar::Other);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A custom event's props may come as an object (`POST /v1/events`).
        if self.field == Field::Props {
            let props: serde_json::Map<String, serde_json::Value> =
                serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
            self.scratch.put_props_object(self.alt, &props);
            return Ok(());
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.put(Scalar::Other);
        Ok(())
    }
}
