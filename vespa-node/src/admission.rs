//! Who may start a handshake: the slots for connections that have not yet proved a key.
//!
//! Before a peer proves it holds a key it is nobody, and nobody may take what the tree's own
//! nodes need to reconnect. So the slots are split:
//! - a shared pool ([`Admission::new`]'s `open`), in which one source address may hold at
//!   most `per_source` handshakes at once, so one address (or a few) cannot fill it;
//! - a reserve that only the addresses of the topology's children may use, once the shared
//!   pool is full: a flood from elsewhere never locks a child out.
//!
//! A slot is held until the handshake ends (either way) and given back when its [`Ticket`]
//! drops.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// Handshake slots of one listening node.
pub(crate) struct Admission {
    state: Mutex<State>,
    open: usize,
    reserve: usize,
    per_source: usize,
    children: BTreeSet<IpAddr>,
}

#[derive(Default)]
struct State {
    open_used: usize,
    reserve_used: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address already holds its share of the pool.
    SourceBusy,
    /// Every slot it may use is taken.
    Full,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::SourceBusy => "too many handshakes in progress from this address",
            Refusal::Full => "too many handshakes in progress",
        })
    }
}

/// A slot, given back on drop.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    reserved: bool,
}

impl Admission {
    /// `open` shared slots (at most `per_source` per address) and `reserve` more for the
    /// addresses in `children`.
    pub fn new(
        open: usize,
        reserve: usize,
        per_source: usize,
        children: BTreeSet<IpAddr>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State::default()),
            open,
            reserve,
            per_source,
            children,
        })
    }

    /// A slot for a connection from `source`, or why there is none.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refusal> {
        let mut st = lock(&self.state);
        let child = self.children.contains(&source);
        let mine = st.per_source.get(&source).copied().unwrap_or(0);
        let reserved = if st.open_used < self.open && (child || mine < self.per_source) {
            st.open_used += 1;
            false
        } else if child && st.reserve_used < self.reserve {
            st.reserve_used += 1;
            true
        } else if !child && mine >= self.per_source {
            return Err(Refusal::SourceBusy);
        } else {
            return Err(Refusal::Full);
        };
        *st.per_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            reserved,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = lock(&self.admission.state);
        if self.reserved {
            st.reserve_used -= 1;
        } else {
            st.open_used -= 1;
        }
        if let Some(n) = st.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                st.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_address_gets_its_share_and_children_keep_their_reserve() {
        let child = ip("10.0.0.2");
        let a = Admission::new(4, 2, 2, [child].into());
        let flood: Vec<Ticket> = (0..2)
            .map(|_| a.admit(ip("192.0.2.1")).expect("share"))
            .collect();
        assert_eq!(a.admit(ip("192.0.2.1")).err(), Some(Refusal::SourceBusy));
        let more: Vec<Ticket> = (2..4)
            .map(|i| a.admit(ip(&format!("192.0.2.{i}"))).expect("pool"))
            .collect();
        assert_eq!(
            a.admit(ip("192.0.2.9")).err(),
            Some(Refusal::Full),
            "pool full"
        );
        let c1 = a.admit(child).expect("reserve");
        let c2 = a.admit(child).expect("reserve");
        assert_eq!(a.admit(child).err(), Some(Refusal::Full), "reserve used up");
        drop(c1);
        let _c3 = a.admit(child).expect("a freed reserve slot");
        drop((flood, more, c2));
        let st = lock(&a.state);
        assert_eq!((st.open_used, st.reserve_used), (0, 1));
        assert_eq!(
            st.per_source.len(),
            1,
            "only the child's live slot is remembered"
        );
    }
}
