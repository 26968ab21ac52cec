//! How single values are read: text (an environment variable may arrive as a number),
//! durations (humantime, through `humantime-serde`), and `catch_up`'s "off".

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::hooks::Command;

/// A string, also when the environment supplied digits or `true` for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An optional humantime duration, longer than zero; a bad one says what is expected.
/// (humantime-serde does the same parsing, but its errors cannot say so.)
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"20s\", \"45m\" or \"2h\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            match humantime::parse_duration(s.trim()) {
                Ok(d) if d.is_zero() => Err(E::custom("must be longer than zero")),
                Ok(d) => Ok(Some(d)),
                Err(e) => Err(E::custom(format!(
                    "{s:?}: {e} (expected a duration like \"20s\", \"45m\" or \"2h\")"
                ))),
            }
        }
    }
    d.deserialize_any(V)
}

/// `catch_up`: a duration, or `"off"` (`Some(None)`).
pub fn catch_up<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Duration>>, D::Error> {
    let text = Text::deserialize(d)?.0;
    if text.trim() == "off" {
        return Ok(Some(None));
    }
    humantime::parse_duration(text.trim())
        .map(|d| Some(Some(d)))
        .map_err(|_| {
            de::Error::custom(format!(
                "{text:?}: expected \"off\" (skip missed runs) or a duration like \"2h\""
            ))
        })
}

/// `to`: one address or a list of them.
pub fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Text>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Text),
        Many(Vec<Text>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(t)) => Ok(Some(vec![t])),
        Ok(OneOrMany::Many(v)) => Ok(Some(v)),
        Err(_) => Err(de::Error::custom(
            "expected an address or a list of addresses",
        )),
    }
}

/// A whole number within `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i128;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
                Ok(v.into())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
                Ok(v.into())
            }
        }
        let n = d.deserialize_any(V)?;
        if (i128::from(MIN)..=i128::from(MAX)).contains(&n) {
            Ok(Self(n as u64))
        } else {
            Err(de::Error::custom(format!(
                "{n} is out of range ({MIN}..={MAX})"
            )))
        }
    }
}

/// A hook: a shell string (run with `sh -c`), or a list of argv arrays run in order.
/// `[]` runs nothing (a job's way to drop what `[defaults]` sets).
pub fn commands<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Command>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Shell(String),
        List(Vec<Item>),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Argv(Vec<String>),
        Word(String),
    }
    const EXPECTED: &str = "expected a shell string (run with sh -c) or a list of argv arrays, \
                            like [[\"fsfreeze\", \"--freeze\", \"/srv\"]]";
    match Form::deserialize(d) {
        Ok(Form::Shell(s)) if s.trim().is_empty() => Err(de::Error::custom(
            "is an empty command; use [] to run nothing",
        )),
        Ok(Form::Shell(s)) => Ok(Some(vec![Command::Shell(s)])),
        Ok(Form::List(items)) => items
            .into_iter()
            .map(|item| match item {
                Item::Argv(argv) if argv.first().is_some_and(|p| !p.trim().is_empty()) => {
                    Ok(Command::Argv(argv))
                }
                Item::Argv(_) => Err(de::Error::custom(
                    "holds an empty argv array (its first word is the program)",
                )),
                Item::Word(w) => Err(de::Error::custom(format!(
                    "is a list of strings ({w:?}, …): {EXPECTED}; one command is [[\"prog\", \"arg\"]]"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Err(_) => Err(de::Error::custom(EXPECTED)),
    }
}
