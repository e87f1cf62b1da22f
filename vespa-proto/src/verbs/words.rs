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
    OrDash<Target>,
    Prefix,
    Rate
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

/// What a block applies to: an IP address, an address prefix or a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// By IP address.
    Ip(IpAddr),
    /// By link-layer address.
    Mac(MacAddr),
    /// By address prefix (`10.0.0.0/24`, `2001:db8::/64`): always a network address (host
    /// bits zero) shorter than a whole address, which is [`Target::Ip`].
    Net(Prefix),
}

impl fmt::Display for Target {
    /// The bare address (`10.0.0.1`, `aa:bb:..`) or prefix (`10.0.0.0/24`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Mac(m) => write!(f, "{m}"),
            Target::Net(p) => write!(f, "{p}"),
        }
    }
}

impl Target {
    /// The target for `addr/len`: [`Target::Ip`] for a whole address, else the prefix.
    pub fn prefix(addr: IpAddr, len: u8) -> Result<Target, String> {
        let p = Prefix::new(addr, len)?;
        Ok(if p.len == p.max_len() {
            Target::Ip(p.addr)
        } else {
            Target::Net(p)
        })
    }
}

impl Serialize for Target {
    /// As text, the way it is written in a call (`10.0.0.0/24`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Target::parse_word(&s).map_err(serde::de::Error::custom)
    }
}

impl Word for Target {
    const PLACEHOLDER: Option<&'static str> = Some("mac|ip|prefix");
    fn parse_word(word: &str) -> Result<Self, String> {
        let w = word.trim();
        if let Ok(ip) = w.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        if w.contains('/') {
            let p: Prefix = w.parse()?;
            return Target::prefix(p.addr, p.len);
        }
        w.parse::<MacAddr>().map(Target::Mac).map_err(|_| {
            format!(
                "invalid block target {w:?}: expected a MAC address (aa:bb:cc:dd:ee:ff), an \
                     IPv4/IPv6 address or a prefix (10.0.0.0/24)"
            )
        })
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// An address prefix: a network address (host bits zero) and its length in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// The network address (host bits are zero).
    pub addr: IpAddr,
    /// Its length, at most 32 (IPv4) or 128 (IPv6).
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the host bits cleared; an error when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max} bits"));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Prefix { addr, len })
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Prefix::new(ip, self.len).is_ok_and(|p| p.addr == self.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let s = s.trim();
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid prefix {s:?}: {a:?} is not an IP address"))?;
        let len = if l.is_empty() {
            if addr.is_ipv4() {
                32
            } else {
                128
            }
        } else {
            l.parse::<u8>()
                .map_err(|_| format!("invalid prefix {s:?}: {l:?} is not a prefix length"))?
        };
        Prefix::new(addr, len).map_err(|e| format!("invalid prefix {s:?}: {e}"))
    }
}

impl Word for Prefix {
    const PLACEHOLDER: Option<&'static str> = Some("prefix");
    fn parse_word(word: &str) -> Result<Self, String> {
        word.parse()
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// A rate limit: bytes per second (`125000`, `1500B/s`, `10kB/s`, `8mbit`) or packets per
/// second (`1000pps`, `20kpps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    /// Bytes per second.
    Bytes(u64),
    /// Packets per second.
    Packets(u64),
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Bytes(b) => write!(f, "{b}B/s"),
            Rate::Packets(p) => write!(f, "{p}pps"),
        }
    }
}

impl Serialize for Rate {
    /// As text, the way it is written in a call (`1000pps`, `125000B/s`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let w = s.trim();
        let lower = w.to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (num, unit) = lower.split_at(split);
        let bad = || {
            format!(
                "invalid rate {w:?}: expected bytes per second (125000, 1500B/s, 10kB/s, \
                 8mbit) or packets per second (1000pps, 20kpps)"
            )
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        let (scale, packets) = match unit.trim() {
            "" | "b/s" | "bps" => (1.0, false),
            "kb/s" => (1e3, false),
            "mb/s" => (1e6, false),
            "gb/s" => (1e9, false),
            "bit" | "bit/s" => (1.0 / 8.0, false),
            "kbit" | "kbit/s" => (1e3 / 8.0, false),
            "mbit" | "mbit/s" => (1e6 / 8.0, false),
            "gbit" | "gbit/s" => (1e9 / 8.0, false),
            "pps" => (1.0, true),
            "kpps" => (1e3, true),
            "mpps" => (1e6, true),
            _ => return Err(bad()),
        };
        let v = n * scale;
        if !v.is_finite() || !(1.0..=1e13).contains(&v) {
            return Err(format!("invalid rate {w:?}: out of range"));
        }
        Ok(if packets {
            Rate::Packets(v as u64)
        } else {
            Rate::Bytes(v as u64)
        })
    }
}

impl Word for Rate {
    const PLACEHOLDER: Option<&'static str> = Some("rate");
    fn parse_word(word: &str) -> Result<Self, String> {
        word.parse()
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
