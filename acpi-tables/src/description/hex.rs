//! Addresses in JSON: written as "0x..." strings, read from such strings or plain numbers.

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;
use std::marker::PhantomData;

pub fn serialize<S, T>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Copy + Into<u64>,
{
    serializer.serialize_str(&format!("{:#x}", (*value).into()))
}

pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(HexVisitor(PhantomData))
}

struct HexVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> HexVisitor<T> {
    fn fit<E: de::Error>(value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| {
            E::custom(format!(
                "{value:#x} is too large for a {}-byte field",
                std::mem::size_of::<T>()
            ))
        })
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for HexVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an unsigned integer or a string such as \"0xB0000000\"")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        Self::fit(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        let value = u64::try_from(value)
            .map_err(|_| E::custom(format!("{value} is negative; addresses are unsigned")))?;
        Self::fit(value)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        let digits = text.replace('_', "");
        let parsed = match digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => digits.parse(),
        };
        let value = parsed.map_err(|_| {
            E::custom(format!(
                "{text:?} is not a number; write hex as \"0x...\" or decimal digits"
            ))
        })?;
        Self::fit(value)
    }
}
