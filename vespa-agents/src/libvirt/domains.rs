//! The domains a libvirt agent manages (`[node.params] domains`).
//!
//! A hypervisor often runs VMs VESPA must not touch: another tenant's, the infrastructure's
//! own, or (in the tests) another test's. With `domains` set, the agent knows only the VMs
//! whose name matches one of its glob patterns: `list_vms`, the tap map and domain events
//! leave the others out, and every verb naming one of them is refused before anything is
//! asked of it, with an error saying why. Matching is by name, after a UUID has been resolved,
//! so a caller cannot reach an unmanaged VM through its UUID.

use std::sync::Arc;

/// Longest `domains` value taken from a topology file.
const MAX_PATTERNS: usize = 64;

/// Name patterns (`*`, `?`, `[...]` as in a shell); empty: every domain.
#[derive(Debug, Clone, Default)]
pub struct Domains(Arc<[glob::Pattern]>);

impl Domains {
    /// Every domain of the hypervisor.
    pub fn all() -> Domains {
        Domains::default()
    }

    /// Comma-separated patterns, e.g. `web-*, db-[0-9]`.
    pub fn parse(list: &str) -> Result<Domains, String> {
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err("names no pattern (leave it out to manage every domain)".into());
        }
        if entries.len() > MAX_PATTERNS {
            return Err(format!("has more than {MAX_PATTERNS} patterns"));
        }
        entries
            .into_iter()
            .map(|e| glob::Pattern::new(e).map_err(|err| format!("pattern {e:?}: {err}")))
            .collect::<Result<Vec<_>, _>>()
            .map(|p| Domains(p.into()))
    }

    /// Whether the agent manages the domain named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(name))
    }

    /// Whether some domains are left out.
    pub fn is_scoped(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Display for Domains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        let list: Vec<&str> = self.0.iter().map(glob::Pattern::as_str).collect();
        f.write_str(&list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_scope_the_domains_by_name() {
        let d = Domains::parse(" web-*, db-[0-9] ,").expect("valid");
        assert!(d.is_scoped());
        for yes in ["web-1", "web-", "db-7"] {
            assert!(d.contains(yes), "{yes}");
        }
        for no in ["db-10", "xweb-1", "mail", ""] {
            assert!(!d.contains(no), "{no}");
        }
        assert_eq!(d.to_string(), "web-*, db-[0-9]");
        let all = Domains::all();
        assert!(!all.is_scoped() && all.contains("anything"));
        assert_eq!(all.to_string(), "*");
    }

    #[test]
    fn a_bad_list_is_refused_with_the_reason() {
        assert!(Domains::parse(" , ").unwrap_err().contains("no pattern"));
        assert!(Domains::parse("web-[").unwrap_err().contains("\"web-[\""));
        let many = vec!["a"; MAX_PATTERNS + 1].join(",");
        assert!(Domains::parse(&many).unwrap_err().contains("more than"));
    }
}
