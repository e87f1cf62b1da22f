//! Typed verbs: what a node can be asked to do, one enum per kind of node.
//!
//! On the wire a call stays what it was in 2014: `call <node> <verb> [args...]`, a verb name
//! and words ([`crate::Message::Call`]). Each kind of node parses those words exactly once,
//! into a variant of its own enum with typed fields ([`Verb::parse`], as mini-redis's
//! `Command::from_frame`), and everything after that — dispatch, the policy's actuator calls,
//! the API's questions — handles the enum. Writing a verb back to words ([`Verb::args`]) is
//! the inverse, so a typed call made by the VO reaches the agent as the same words an operator
//! would type.
//!
//! One definition per verb (the [`verbs!`](crate::verbs!) macro) gives the enum, the parser,
//! the writer, and the usage and help lines that `help` lists: the usage line is generated
//! from the fields (`<vm>` for a required one, `[mac]` for an optional one, `[args...]` for
//! the rest), so it cannot drift from what the parser accepts. Verb names are matched as
//! strings in that one generated parser and nowhere else.
//!
//! The families: [`NodeVerb`] (every node: `help`, `list_slaves`, `find_node`, `call`,
//! `stats`, `get_alerts`, `destroy`), [`HoVerb`] (an HO's fast-path policy), [`VoVerb`] (the
//! VO's decisions and allowlist by hand), [`SensorVerb`]
//! (bandwidth and connections agents), [`LibvirtVerb`], [`SdnVerb`], [`AvVerb`] and
//! [`FirewallVerb`] (the kernel firewall agent).

mod av;
mod firewall;
mod libvirt;
mod node;
mod sdn;
mod sensor;
mod words;

pub use av::AvVerb;
pub use firewall::{
    BlockInfo, FirewallStats, FirewallVerb, ReflexSettings, Shaped, ShapedSelector, ThrottleInfo,
};
pub use libvirt::{Codeset, Keys, LibvirtVerb};
pub use node::{BlockEntry, HoVerb, NodeVerb, VoVerb};
pub use sdn::{BlockSelector, HeldFlow, Page, SdnVerb, LIST_PAGE};
pub use sensor::SensorVerb;
pub use words::{Arg, MacAddr, OnOff, OrDash, Prefix, Rate, Target, Ttl, Word, Words};

/// How `help` describes one verb.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerbDoc {
    /// The verb.
    pub name: &'static str,
    /// Its arguments, e.g. `<vm> [mac]` (generated from the fields).
    pub usage: String,
    /// One sentence.
    pub help: String,
    /// Who may call it.
    pub permission: Permission,
}

/// Who may call a verb. Each verb's definition says it (`Variant "name" [Command] { .. }`;
/// without a mark, a verb only reads). A node checks it where a call enters the tree: calls
/// that reach a node from its master have been checked by the node where they entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Permission {
    /// Anyone who holds a key of the tree: it only reads.
    Read,
    /// Any node of the tree as well, children included (e.g. the antivirus agent relays
    /// keystrokes through the hypervisor agent's `send_key`).
    Node,
    /// Only the master chain (the policy) or an operator: it changes what the
    /// infrastructure does (blocks, links, VMs, the policy, the tree itself). Never a sibling
    /// or a child.
    Command,
}

/// Who may call the verb named `verb`: the strictest its name has in any family (`Read` for
/// a name no family has; the node it reaches refuses it anyway).
pub fn permission_of(verb: &str) -> Permission {
    let families = [
        NodeVerb::docs(),
        HoVerb::docs(),
        VoVerb::docs(),
        SensorVerb::docs(),
        LibvirtVerb::docs(),
        SdnVerb::docs(),
        AvVerb::docs(),
        FirewallVerb::docs(),
    ];
    families
        .iter()
        .flatten()
        .filter(|d| d.name == verb)
        .map(|d| d.permission)
        .max()
        .unwrap_or(Permission::Read)
}

/// Why words are not a verb of a family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbError {
    /// No verb of this family has that name.
    #[error("unknown verb {verb:?} (verbs: {})", known.join(", "))]
    Unknown {
        /// The name asked for.
        verb: String,
        /// The family's verbs.
        known: Vec<&'static str>,
    },
    /// Too few or too many words.
    #[error("usage: {}", usage_line(verb, usage))]
    Usage {
        /// The verb.
        verb: &'static str,
        /// Its usage.
        usage: String,
    },
    /// A word does not parse as what the argument needs.
    #[error("{verb} {arg}: {reason}")]
    Invalid {
        /// The verb.
        verb: &'static str,
        /// The argument (the field's name).
        arg: &'static str,
        /// What is wrong with the word.
        reason: String,
    },
}

impl VerbError {
    /// True when the name is not one of the family's verbs (another family may have it).
    pub fn is_unknown(&self) -> bool {
        matches!(self, VerbError::Unknown { .. })
    }
}

fn usage_line(verb: &str, usage: &str) -> String {
    if usage.is_empty() {
        verb.to_string()
    } else {
        format!("{verb} {usage}")
    }
}

/// A family of verbs: the verbs one kind of node answers. Implemented by [`verbs!`](crate::verbs!).
pub trait Verb: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// Parses a call's verb name and words (the one place where names are matched).
    fn parse(verb: &str, args: &[String]) -> Result<Self, VerbError>;
    /// The verb's name on the wire.
    fn name(&self) -> &'static str;
    /// The verb's words on the wire, in the 2014 order.
    fn args(&self) -> Vec<String>;
    /// Every verb of the family, in definition order, as `help` lists them.
    fn docs() -> Vec<VerbDoc>;

    /// Who may call this verb.
    fn permission(&self) -> Permission {
        permission_of(self.name())
    }

    /// The call as one line, `name arg arg...` (for logs and alerts).
    fn line(&self) -> String {
        let mut out = self.name().to_string();
        for a in self.args() {
            out.push(' ');
            out.push_str(&a);
        }
        out
    }
}

/// The usage of a verb from its arguments' usages.
#[doc(hidden)]
pub fn join_usage(parts: &[String]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A help sentence from a verb's doc comment lines.
#[doc(hidden)]
pub fn join_help(lines: &[&str]) -> String {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The usage of verb `name` among `docs` (for a [`VerbError::Usage`]).
#[doc(hidden)]
pub fn usage_of(docs: &[VerbDoc], name: &str) -> String {
    docs.iter()
        .find(|d| d.name == name)
        .map(|d| d.usage.clone())
        .unwrap_or_default()
}

/// One line per verb, `  name usage    help`, as the `help` verb answers.
pub fn listing(docs: &[VerbDoc]) -> String {
    let mut out = String::new();
    for d in docs {
        let head = usage_line(d.name, &d.usage);
        out.push_str(&format!("  {head:<34} {}\n", d.help));
    }
    out
}

/// Defines a family of verbs: an enum with one struct-like variant per verb, and its
/// [`Verb`] implementation. Each variant is written
/// `/// help sentence` `Variant "wire_name" [Permission] { field: Type, ... }` (the
/// [`Permission`] is optional: `Read` by default); a field's type says how it
/// is read: `T` one required word, `Option<T>` one optional word, `Vec<T>` every word left,
/// where `T` implements [`Word`] (or the field type implements [`Arg`] directly).
///
/// ```
/// vespa_proto::verbs! {
///     /// What a test agent answers.
///     pub enum EchoVerb {
///         /// says the words back
///         Echo "echo" { words: Vec<String> },
///         /// sleeps, then answers
///         Nap "nap" { ms: u64, note: Option<String> },
///     }
/// }
/// use vespa_proto::verbs::Verb;
/// let v = EchoVerb::parse("nap", &["20".into()]).unwrap();
/// assert_eq!(v, EchoVerb::Nap { ms: 20, note: None });
/// assert_eq!(v.line(), "nap 20");
/// assert_eq!(EchoVerb::docs()[1].usage, "<ms> [note]");
/// assert_eq!(
///     EchoVerb::parse("nap", &[]).unwrap_err().to_string(),
///     "usage: nap <ms> [note]"
/// );
/// ```
#[macro_export]
macro_rules! verbs {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident $wire:literal $([$perm:ident])? { $($field:ident : $ty:ty),* $(,)? }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $name {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Wire name: `", $wire, "`.")]
                $variant { $(#[allow(missing_docs)] $field: $ty),* },
            )*
        }

        impl $crate::verbs::Verb for $name {
            fn parse(verb: &str, args: &[String]) -> Result<Self, $crate::verbs::VerbError> {
                match verb {
                    $(
                        $wire => {
                            let usage = || {
                                $crate::verbs::usage_of(&<$name as $crate::verbs::Verb>::docs(), $wire)
                            };
                            #[allow(unused_mut)]
                            let mut words = $crate::verbs::Words::new($wire, args, &usage);
                            $(
                                let $field = <$ty as $crate::verbs::Arg>::take(
                                    &mut words,
                                    stringify!($field),
                                )?;
                            )*
                            words.finish()?;
                            Ok($name::$variant { $($field),* })
                        }
                    )*
                    other => Err($crate::verbs::VerbError::Unknown {
                        verb: other.to_string(),
                        known: vec![$($wire),*],
                    }),
                }
            }

            fn name(&self) -> &'static str {
                match self {
                    $($name::$variant { .. } => $wire,)*
                }
            }

            #[allow(unused_mut, unused_variables)]
            fn args(&self) -> Vec<String> {
                let mut out = Vec::new();
                match self {
                    $(
                        $name::$variant { $($field),* } => {
                            $($crate::verbs::Arg::put($field, &mut out);)*
                        }
                    )*
                }
                out
            }

            fn docs() -> Vec<$crate::verbs::VerbDoc> {
                vec![
                    $(
                        $crate::verbs::VerbDoc {
                            name: $wire,
                            usage: $crate::verbs::join_usage(&[
                                $(<$ty as $crate::verbs::Arg>::usage(stringify!($field))),*
                            ]),
                            help: $crate::verbs::join_help(&[$($doc),*]),
                            permission: $crate::__verb_permission!($($perm)?),
                        },
                    )*
                ]
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&$crate::verbs::Verb::line(self))
            }
        }
    };
}

/// The permission a verb definition names, `Read` when it names none.
#[doc(hidden)]
#[macro_export]
macro_rules! __verb_permission {
    () => {
        $crate::verbs::Permission::Read
    };
    ($perm:ident) => {
        $crate::verbs::Permission::$perm
    };
}

#[cfg(test)]
mod tests;
