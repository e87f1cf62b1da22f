//! How a verb's words become typed arguments and back.
//!
//! A [`Word`] is one word on the wire (an address, a number, a name); an [`Arg`] is how a
//! field takes its words: a `Word` type takes one required word, `Option<W>` one optional
//! word, `Vec<W>` every word left. Parsing never panics and names the argument that failed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::VerbError;

/// The words of one call, taken front to back by the fields of its verb.
pub struct Words<'a> {
    verb: &'static str,
    rest: std::slice::Iter<'a, String>,
    usage: &'a dyn Fn() -> String,
}

impl<'a> Words<'a> {
    /// The words of `verb`; `usage` builds its usage line for errors.
    pub fn new(verb: &'static str, args: &'a [String], usage: &'a dyn Fn() -> String) -> Self {
        Words {
            verb,
            rest: args.iter(),
            usage,
        }
    }

    /// The next word, if any.
    pub fn next_word(&mut self) -> Option<&'a str> {
        self.rest.next().map(String::as_str)
    }

    /// Every word left.
    pub fn rest(&mut self) -> Vec<&'a str> {
        self.rest.by_ref().map(String::as_str).collect()
    }

    /// The error for too few or too many words.
    pub fn usage_error(&self) -> VerbError {
        VerbError::Usage {
            verb: self.verb,
            usage: (self.usage)(),
        }
    }

    /// The error for a word that does not parse as argument `arg`.
    pub fn invalid(&self, arg: &'static str, reason: String) -> VerbError {
        VerbError::Invalid {
            verb: self.verb,
            arg,
            reason,
        }
    }

    /// Fails when words are left over.
    pub fn finish(mut self) -> Result<(), VerbError> {
        match self.rest.next() {
            None => Ok(()),
            Some(_) => Err(self.usage_error()),
        }
    }
}

/// One word of a call: parsed from it, written back to it.
pub trait Word: Sized {
    /// What the usage line shows for it instead of the field's name (e.g. `mac|ip`).
    const PLACEHOLDER: Option<&'static str> = None;
    /// Parses the word; the error says what is wrong with it.
    fn parse_word(word: &str) -> Result<Self, String>;
    /// The word as sent.
    fn to_word(&self) -> String;
}

/// How a verb's field takes its words.
pub trait Arg: Sized {
    /// The field's part of the usage line.
    fn usage(field: &str) -> String;
    /// Takes the field's words from the front of `words`.
    fn take(words: &mut Words<'_>, field: &'static str) -> Result<Self, VerbError>;
    /// Appends the field's words.
    fn put(&self, out: &mut Vec<String>);
}

pub(super) fn shown<W: Word>(field: &str) -> &str {
    W::PLACEHOLDER.unwrap_or(field)
}

/// Implements [`Arg`] for a [`Word`] type (one required word), its `Option` (one optional
/// word) and its `Vec` (every word left).
macro_rules! word_args {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::verbs::Arg for $t {
            fn usage(field: &str) -> String {
                format!("<{}>", $crate::verbs::words::shown::<$t>(field))
            }
            fn take(words: &mut $crate::verbs::Words<'_>, field: &'static str) -> Result<Self, $crate::verbs::VerbError> {
                let w = words.next_word().ok_or_else(|| words.usage_error())?;
                <$t as $crate::verbs::Word>::parse_word(w).map_err(|e| words.invalid(field, e))
            }
            fn put(&self, out: &mut Vec<String>) {
                out.push($crate::verbs::Word::to_word(self));
            }
        }
        impl $crate::verbs::Arg for Option<$t> {
            fn usage(field: &str) -> String {
                format!("[{}]", $crate::verbs::words::shown::<$t>(field))
            }
            fn take(words: &mut $crate::verbs::Words<'_>, field: &'static str) -> Result<Self, $crate::verbs::VerbError> {
                match words.next_word() {
                    None => Ok(None),
                    Some(w) => <$t as $crate::verbs::Word>::parse_word(w).map(Some).map_err(|e| words.invalid(field, e)),
                }
            }
            fn put(&self, out: &mut Vec<String>) {
                if let Some(v) = self {
                    out.push($crate::verbs::Word::to_word(v));
                }
            }
        }
        impl $crate::verbs::Arg for Vec<$t> {
            fn usage(field: &str) -> String {
                format!("[{}...]", $crate::verbs::words::shown::<$t>(field))
            }
            fn take(words: &mut $crate::verbs::Words<'_>, field: &'static str) -> Result<Self, $crate::verbs::VerbError> {
                let all = words.rest();
                all.into_iter()
                    .map(|w| <$t as $crate::verbs::Word>::parse_word(w).map_err(|e| words.invalid(field, e)))
                    .collect()
            }
            fn put(&self, out: &mut Vec<String>) {
                out.extend(self.iter().map($crate::verbs::Word::to_word));
            }
        }
    )*};
}
pub(crate) use word_args;

word_args!(
    String,
    u64,
    IpAddr,
    MacAddr,
    Target,
    Ttl,
    OnOff,
    OrDash<Target>
);

impl Word for String {
    fn parse_word(word: &str) -> Result<Self, String> {
        Ok(word.to_string())
    }
    fn to_word(&self) -> String {
        self.clone()
    }
}

impl Word for u64 {
    fn parse_word(word: &str) -> Result<Self, String> {
        word.trim()
            .parse()
            .map_err(|_| format!("{word:?} is not a whole number"))
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

impl Word for IpAddr {
    fn parse_word(word: &str) -> Result<Self, String> {
        word.trim()
            .parse()
            .map_err(|_| format!("{word:?} is not an IP address"))
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// A link-layer address: `aa:bb:cc:dd:ee:ff` (or `-` separators, any case); written in
/// lower case with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("malformed MAC address {s:?}");
        let mut out = [0u8; 6];
        let mut parts = s.trim().split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Word for MacAddr {
    fn parse_word(word: &str) -> Result<Self, String> {
        word.parse()
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// What a block applies to: an IP address or a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// By IP address.
    Ip(IpAddr),
    /// By link-layer address.
    Mac(MacAddr),
}

impl fmt::Display for Target {
    /// The bare address (`10.0.0.1`, `aa:bb:..`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Mac(m) => write!(f, "{m}"),
        }
    }
}

impl Word for Target {
    const PLACEHOLDER: Option<&'static str> = Some("mac|ip");
    fn parse_word(word: &str) -> Result<Self, String> {
        let w = word.trim();
        if let Ok(ip) = w.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        w.parse::<MacAddr>().map(Target::Mac).map_err(|_| {
            format!(
                "invalid block target {w:?}: expected a MAC address (aa:bb:cc:dd:ee:ff) or an \
                     IPv4/IPv6 address"
            )
        })
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// A time-to-live: seconds (`300`, `2.5`), or `none` / `0` for "until released".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ttl {
    /// Ends after this long.
    After(Duration),
    /// Never ends by itself.
    Forever,
}

impl Ttl {
    /// The duration, or `None` for [`Ttl::Forever`].
    pub fn duration(self) -> Option<Duration> {
        match self {
            Ttl::After(d) => Some(d),
            Ttl::Forever => None,
        }
    }
}

impl Word for Ttl {
    const PLACEHOLDER: Option<&'static str> = Some("ttl_s|none");
    fn parse_word(word: &str) -> Result<Self, String> {
        match word.trim() {
            "none" | "0" => Ok(Ttl::Forever),
            s => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => {
                    Ok(Ttl::After(Duration::from_secs_f64(v)))
                }
                _ => Err(format!(
                    "invalid time-to-live {s:?}: expected seconds > 0, or `none`"
                )),
            },
        }
    }
    fn to_word(&self) -> String {
        match self {
            Ttl::Forever => "none".into(),
            Ttl::After(d) => d.as_secs_f64().to_string(),
        }
    }
}

/// A switch: `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl Word for OnOff {
    const PLACEHOLDER: Option<&'static str> = Some("on|off");
    fn parse_word(word: &str) -> Result<Self, String> {
        match word.trim() {
            "on" => Ok(OnOff(true)),
            "off" => Ok(OnOff(false)),
            w => Err(format!("{w:?} is neither on nor off")),
        }
    }
    fn to_word(&self) -> String {
        if self.0 { "on" } else { "off" }.into()
    }
}

/// A word that may be left out in the middle of a call by writing `-` (or an empty word), as
/// the 2014 `alert_ip <ip> - <ttl>` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrDash<W>(pub Option<W>);

impl<W: Word> Word for OrDash<W> {
    fn parse_word(word: &str) -> Result<Self, String> {
        match word.trim() {
            "" | "-" => Ok(OrDash(None)),
            w => W::parse_word(w).map(|v| OrDash(Some(v))),
        }
    }
    fn to_word(&self) -> String {
        self.0.as_ref().map_or_else(|| "-".into(), Word::to_word)
    }
}
