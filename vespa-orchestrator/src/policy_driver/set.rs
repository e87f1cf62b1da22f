//! The VO's driver and the fast-path drivers of the HOs one process runs, behind one API.
//!
//! The policy file is one: a reload or a dry-run switch through the API reaches every driver
//! of the process, `actions` lists what each holds (an HO's with its `at`), and `release`
//! undoes a block whichever of them placed it. Manual blocks stay the VO's. The allowlist is
//! one too: an entry by hand protects from every driver's rules, and the VO's driver lists it
//! (and pushes it to the firewall agent).

use super::{load_rules, PolicyDriver};
use crate::control::{ActiveAction, AllowEntry, Operator, PolicyControl, PolicyError};

/// The VO's [`PolicyDriver`] and those of the HOs in the same process.
pub struct PolicySet {
    vo: PolicyDriver,
    hos: Vec<PolicyDriver>,
}

impl PolicySet {
    /// `vo` is the VO's driver, `hos` the HOs' ([`PolicyDriver::new_at`]).
    pub fn new(vo: PolicyDriver, hos: Vec<PolicyDriver>) -> PolicySet {
        PolicySet { vo, hos }
    }

    fn all(&self) -> impl Iterator<Item = &PolicyDriver> {
        std::iter::once(&self.vo).chain(&self.hos)
    }
}

impl PolicyControl for PolicySet {
    fn active_actions(&self) -> Vec<ActiveAction> {
        let mut out: Vec<ActiveAction> =
            self.all().flat_map(PolicyControl::active_actions).collect();
        out.sort_by_key(|x| x.since_unix_s);
        out
    }

    fn rules_text(&self) -> Option<String> {
        self.vo.rules_text()
    }

    fn dry_run(&self) -> bool {
        self.vo.dry_run()
    }

    fn set_dry_run(&self, enabled: bool) -> Result<(), PolicyError> {
        self.all().try_for_each(|d| d.set_dry_run(enabled))
    }

    fn reload(&self, text: &str) -> Result<(), PolicyError> {
        // Checked once for all: every driver takes the new rules or none does.
        load_rules(text, self.vo.inner.topology.as_deref())?;
        self.all().try_for_each(|d| d.reload(text))
    }

    fn release(&self, key: &str) -> Result<String, PolicyError> {
        merge_releases(self.all().map(|d| d.release(key)))
    }

    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError> {
        self.vo.block(target, ttl_s)
    }

    fn block_as(&self, target: &str, ttl_s: u64, who: &Operator) -> Result<String, PolicyError> {
        self.vo.block_as(target, ttl_s, who)
    }

    fn release_as(&self, key: &str, who: &Operator) -> Result<String, PolicyError> {
        merge_releases(self.all().map(|d| d.release_as(key, who)))
    }

    fn allowlist(&self) -> Vec<AllowEntry> {
        self.vo.allowlist()
    }

    fn allow(&self, target: &str, note: Option<&str>) -> Result<(), PolicyError> {
        self.all().try_for_each(|d| d.allow(target, note))
    }

    fn disallow(&self, target: &str) -> Result<(), PolicyError> {
        // The VO's answer is the one that says why an entry cannot go.
        self.vo.disallow(target)?;
        self.hos.iter().try_for_each(|d| match d.disallow(target) {
            Err(PolicyError::NotFound(_)) => Ok(()),
            other => other,
        })
    }
}

/// One answer from the releases of several drivers: what each did, joined, when any did
/// something; otherwise the first failure, or else "not found".
pub(crate) fn merge_releases(
    results: impl IntoIterator<Item = Result<String, PolicyError>>,
) -> Result<String, PolicyError> {
    let (mut done, mut failed, mut not_found) = (Vec::new(), None, None);
    for r in results {
        match r {
            Ok(what) => done.push(what),
            Err(e @ PolicyError::NotFound(_)) => {
                not_found.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed.or(not_found) {
        Some(e) if done.is_empty() => Err(e),
        _ => Ok(done.join("; ")),
    }
}
