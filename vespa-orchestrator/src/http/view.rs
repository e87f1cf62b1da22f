//! What the API knows of the alerts: a bounded view fed by an alert handler on the VO.
//!
//! The handler runs on the VO's connection tasks for every alert it processes, and the VO
//! acknowledges the alert only once it returns: so the handler only copies the alert once
//! (into an `Arc`) and files it under one short lock, and the readers hold that lock no
//! longer. A read takes the shared alerts (or tables) out under the lock, cheap clones of
//! `Arc`s, and does the rest, serializing a page of a thousand alerts or summing every
//! agent's connection table, after releasing it. Everything is bounded: the last `keep`
//! alerts, the last [`SAMPLES`] deltas per interface, the latest connection table per origin
//! (the alert that carried it, shared with the list).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use vespa_node::delivery::KEEP_ALERT_BYTES;

use serde::Serialize;
use vespa_node::AlertHandler;
use vespa_proto::{Alert, AlertBody};

use crate::metrics::Metrics;

/// Deltas kept per interface (the 2014 `/recv_bytes` showed the last 40).
pub const SAMPLES: usize = 40;
/// Interfaces followed at once. VM tap devices come and go, so without a bound the table
/// would grow with every VM ever started; the one silent longest is forgotten first.
pub const MAX_INTERFACES: usize = 256;

/// Byte-counter deltas of one interface of one agent, oldest first.
#[derive(Default)]
struct Samples {
    /// The view's alert index when this interface last reported (for eviction).
    touched: u64,
    last: Option<(u64, u64)>,
    rx: VecDeque<u64>,
    tx: VecDeque<u64>,
    /// The VM the interface belongs to, as its agent last said.
    vm: Option<String>,
}

impl Samples {
    fn push(&mut self, rx: u64, tx: u64) {
        // A counter that went backwards was reset (agent or interface restarted): start again
        // from the new value rather than record a huge bogus delta.
        if let Some((lrx, ltx)) = self.last {
            if rx >= lrx && tx >= ltx {
                for (q, d) in [(&mut self.rx, rx - lrx), (&mut self.tx, tx - ltx)] {
                    if q.len() == SAMPLES {
                        q.pop_front();
                    }
                    q.push_back(d);
                }
            }
        }
        self.last = Some((rx, tx));
    }
}

/// Which direction of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received bytes.
    Rx,
    /// Transmitted bytes.
    Tx,
}

/// The traffic of one VM: the deltas of its interfaces summed, aligned on the latest sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmTraffic {
    /// The VM's name.
    pub vm: String,
    /// Its interfaces, as "origin/iface".
    pub interfaces: Vec<String>,
    /// Received bytes per sample interval, oldest first.
    pub rx: Vec<u64>,
    /// Transmitted bytes per sample interval, oldest first.
    pub tx: Vec<u64>,
}

/// Adds `q` into `sum`, both aligned on their last element.
fn add_aligned(sum: &mut Vec<u64>, q: &VecDeque<u64>) {
    if sum.len() < q.len() {
        let pad = q.len() - sum.len();
        sum.splice(0..0, std::iter::repeat_n(0, pad));
    }
    let off = sum.len() - q.len();
    for (s, v) in sum[off..].iter_mut().zip(q) {
        *s += v;
    }
}

/// One kept alert with its index in the VO's stream (for paging).
#[derive(Debug, Clone, Serialize)]
pub struct Indexed {
    /// Position in the stream of alerts the API has seen (0 = the first since start).
    pub index: u64,
    /// The body's kind (`bandwidth`, `conn_threshold`, ...).
    pub kind: &'static str,
    /// The alert as the VO processed it, shared with the view (a page copies no alert).
    pub alert: Arc<Alert>,
}

/// A page of alerts: `next` is the `from` of the following page.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Index of the oldest alert still kept.
    pub first: u64,
    /// Where the next page starts.
    pub next: u64,
    /// The alerts, oldest first.
    pub alerts: Vec<Indexed>,
}

struct State {
    keep: usize,
    next_index: u64,
    alerts: VecDeque<Indexed>,
    /// Their size as sealed frames, kept under [`KEEP_ALERT_BYTES`].
    bytes: usize,
    /// (origin, interface) -> samples, in the order first seen.
    samples: Vec<((String, String), Samples)>,
    /// origin -> its latest `Connections` alert (shared with `alerts`).
    connections: BTreeMap<String, Arc<Alert>>,
}

/// The API's view of the alerts reaching the VO.
pub struct VoView {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl VoView {
    /// A view keeping the last `keep` alerts, counting them in `metrics`.
    pub fn new(keep: usize, metrics: Arc<Metrics>) -> Arc<VoView> {
        let state = State {
            keep: keep.max(1),
            next_index: 0,
            alerts: VecDeque::new(),
            bytes: 0,
            samples: Vec::new(),
            connections: BTreeMap::new(),
        };
        Arc::new(VoView {
            state: Mutex::new(state),
            metrics,
        })
    }

    /// The alert handler to put in the VO's [`vespa_node::Hooks`].
    pub fn handler(self: &Arc<Self>) -> AlertHandler {
        let me = self.clone();
        Arc::new(move |a: &Arc<Alert>| me.on_shared(a))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one alert (a copy of it; the VO's handler shares the node's instead).
    pub fn on_alert(&self, alert: &Alert) {
        self.on_shared(&Arc::new(alert.clone()));
    }

    /// Takes one alert processed at the VO: the node's own, shared (the VO keeps each alert
    /// once, for `get_alerts` and for this view).
    pub fn on_shared(&self, alert: &Arc<Alert>) {
        self.metrics.on_alert(alert);
        let shared = alert.clone();
        let mut s = self.lock();
        match &alert.body {
            AlertBody::Bandwidth {
                iface,
                rx_bytes,
                tx_bytes,
                vm,
            } => {
                let key = (alert.origin.clone(), iface.clone());
                let now = s.next_index;
                match s.samples.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, samples)) => {
                        samples.touched = now;
                        samples.vm.clone_from(vm);
                        samples.push(*rx_bytes, *tx_bytes);
                    }
                    None => {
                        if s.samples.len() >= MAX_INTERFACES {
                            if let Some(oldest) = s
                                .samples
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, (_, v))| v.touched)
                                .map(|(i, _)| i)
                            {
                                s.samples.remove(oldest);
                            }
                        }
                        let mut samples = Samples {
                            touched: now,
                            vm: vm.clone(),
                            ..Samples::default()
                        };
                        samples.push(*rx_bytes, *tx_bytes);
                        s.samples.push((key, samples));
                    }
                }
            }
            AlertBody::Connections { .. } => {
                s.connections.insert(alert.origin.clone(), shared.clone());
            }
            _ => {}
        }
        let index = s.next_index;
        s.next_index += 1;
        s.bytes += shared.sealed_len();
        s.alerts.push_back(Indexed {
            index,
            kind: alert.body.kind(),
            alert: shared,
        });
        while s.alerts.len() > s.keep || s.bytes > KEEP_ALERT_BYTES {
            match s.alerts.pop_front() {
                Some(old) => s.bytes -= old.alert.sealed_len(),
                None => break,
            }
        }
    }

    /// Alerts from index `from` on, at most `limit`: the shared alerts, not copies, so the
    /// lock is held only to clone `limit` pointers.
    pub fn page(&self, from: u64, limit: usize) -> Page {
        let s = self.lock();
        let first = s.next_index - s.alerts.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        let alerts: Vec<Indexed> = s.alerts.iter().skip(skip).take(limit).cloned().collect();
        let next = alerts
            .last()
            .map_or(from.clamp(first, s.next_index), |a| a.index + 1);
        Page {
            first,
            next,
            alerts,
        }
    }

    /// The last `n` alerts, oldest first (shared, as [`VoView::page`]).
    pub fn recent(&self, n: usize) -> Vec<Arc<Alert>> {
        let s = self.lock();
        s.alerts
            .iter()
            .skip(s.alerts.len().saturating_sub(n))
            .map(|i| i.alert.clone())
            .collect()
    }

    /// The deltas of one interface, oldest first: the first one seen, or the one named by
    /// `iface` (and `origin`, when several agents report an interface of that name).
    /// `None` when no such interface has reported.
    pub fn deltas(
        &self,
        origin: Option<&str>,
        iface: Option<&str>,
        dir: Direction,
    ) -> Option<Vec<u64>> {
        let s = self.lock();
        let (_, samples) = s
            .samples
            .iter()
            .find(|((o, i), _)| origin.is_none_or(|w| w == o) && iface.is_none_or(|w| w == i))?;
        Some(match dir {
            Direction::Rx => samples.rx.iter().copied().collect(),
            Direction::Tx => samples.tx.iter().copied().collect(),
        })
    }

    /// The interfaces reporting, as (origin, interface).
    pub fn interfaces(&self) -> Vec<(String, String)> {
        self.lock().samples.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The VM of each interface that belongs to one, keyed "origin/iface".
    pub fn interface_vms(&self) -> BTreeMap<String, String> {
        self.lock()
            .samples
            .iter()
            .filter_map(|((o, i), s)| Some((format!("{o}/{i}"), s.vm.clone()?)))
            .collect()
    }

    /// Traffic per VM (every interface its agents named it on), by VM name.
    pub fn vms(&self) -> Vec<VmTraffic> {
        let s = self.lock();
        let mut by_vm: BTreeMap<&str, VmTraffic> = BTreeMap::new();
        for ((o, i), samples) in &s.samples {
            let Some(vm) = samples.vm.as_deref() else {
                continue;
            };
            let t = by_vm.entry(vm).or_insert_with(|| VmTraffic {
                vm: vm.to_string(),
                interfaces: Vec::new(),
                rx: Vec::new(),
                tx: Vec::new(),
            });
            t.interfaces.push(format!("{o}/{i}"));
            add_aligned(&mut t.rx, &samples.rx);
            add_aligned(&mut t.tx, &samples.tx);
        }
        by_vm.into_values().collect()
    }

    /// Connections per remote address, summed over the latest table of every agent,
    /// busiest first. The tables are summed after releasing the lock.
    pub fn connections(&self) -> Vec<(IpAddr, u64)> {
        let tables: Vec<Arc<Alert>> = self.lock().connections.values().cloned().collect();
        let mut sum: BTreeMap<IpAddr, u64> = BTreeMap::new();
        for alert in &tables {
            let AlertBody::Connections { per_remote, .. } = &alert.body else {
                continue;
            };
            for (ip, n) in per_remote {
                *sum.entry(*ip).or_default() += n;
            }
        }
        let mut out: Vec<(IpAddr, u64)> = sum.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Alerts seen since start.
    pub fn seen(&self) -> u64 {
        self.lock().next_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(seq: u64, rx: u64, tx: u64) -> Alert {
        Alert {
            origin: "bw".into(),
            seq,
            path: vec!["bw".into()],
            timestamp_ns: 1,
            body: AlertBody::Bandwidth {
                iface: "lo".into(),
                rx_bytes: rx,
                tx_bytes: tx,
                vm: None,
            },
        }
    }

    #[test]
    fn kept_alerts_are_bounded_by_bytes_as_well_as_count() {
        let v = VoView::new(10_000, Arc::default());
        for seq in 0..100 {
            v.on_alert(&Alert {
                body: AlertBody::Text("x".repeat(1 << 20)),
                ..bw(seq, 0, 0)
            });
        }
        let page = v.page(0, 10_000);
        assert!(page.alerts.len() < 64, "{} alerts kept", page.alerts.len());
        assert_eq!(page.next, 100, "the newest are kept");
    }

    #[test]
    fn deltas_are_bounded_and_survive_a_counter_reset() {
        let v = VoView::new(10, Arc::default());
        for i in 0..50u64 {
            v.on_alert(&bw(i, i * 100, i * 10));
        }
        let rx = v.deltas(None, None, Direction::Rx).expect("lo reported");
        assert_eq!(rx.len(), SAMPLES);
        assert!(rx.iter().all(|d| *d == 100), "{rx:?}");
        v.on_alert(&bw(50, 5, 5));
        v.on_alert(&bw(51, 15, 6));
        assert_eq!(
            v.deltas(Some("bw"), Some("lo"), Direction::Tx)
                .expect("tx")
                .last(),
            Some(&1),
            "reset: the delta restarts from the new value"
        );
        assert!(v.deltas(None, Some("eth9"), Direction::Rx).is_none());
    }

    #[test]
    fn interfaces_are_bounded_forgetting_the_longest_silent() {
        let v = VoView::new(10, Arc::default());
        let tap = |seq: u64, n: usize| Alert {
            body: AlertBody::Bandwidth {
                iface: format!("vnet{n}"),
                rx_bytes: 1,
                tx_bytes: 1,
                vm: None,
            },
            ..bw(seq, 0, 0)
        };
        v.on_alert(&bw(0, 1, 1));
        for n in 0..MAX_INTERFACES + 5 {
            v.on_alert(&tap(n as u64 + 1, n));
            v.on_alert(&bw(n as u64 + 1000, 1, 1));
        }
        let ifs = v.interfaces();
        assert_eq!(ifs.len(), MAX_INTERFACES);
        assert!(
            ifs.contains(&("bw".into(), "lo".into())),
            "lo keeps reporting: kept"
        );
        assert!(
            !ifs.contains(&("bw".into(), "vnet0".into())),
            "the first tap went silent: forgotten"
        );
    }

    #[test]
    fn vm_traffic_sums_its_interfaces_aligned_on_the_latest_sample() {
        let v = VoView::new(100, Arc::default());
        let dev = |seq: u64, origin: &str, iface: &str, vm: Option<&str>, total: u64| Alert {
            origin: origin.into(),
            body: AlertBody::Bandwidth {
                iface: iface.into(),
                rx_bytes: total,
                tx_bytes: 2 * total,
                vm: vm.map(str::to_string),
            },
            ..bw(seq, 0, 0)
        };
        // web's vnet0 reports 4 times (+10 each), its vnet1 twice (+100); db's vnet2 once.
        for (i, t) in [0u64, 10, 20, 30].into_iter().enumerate() {
            v.on_alert(&dev(i as u64, "bw", "vnet0", Some("web"), t));
        }
        v.on_alert(&dev(10, "bw", "vnet1", Some("web"), 500));
        v.on_alert(&dev(11, "bw", "vnet1", Some("web"), 600));
        v.on_alert(&dev(12, "bw2", "vnet2", Some("db"), 7));
        v.on_alert(&dev(13, "bw", "eth0", None, 7));
        let vms = v.vms();
        assert_eq!(
            vms.iter().map(|t| t.vm.as_str()).collect::<Vec<_>>(),
            ["db", "web"]
        );
        let web = &vms[1];
        assert_eq!(web.interfaces, ["bw/vnet0", "bw/vnet1"]);
        assert_eq!(
            web.rx,
            [10, 10, 110],
            "vnet1's one delta adds to vnet0's latest"
        );
        assert_eq!(web.tx, [20, 20, 220]);
        assert!(vms[0].rx.is_empty(), "one sample is no delta yet");
        assert_eq!(
            v.interface_vms().get("bw/vnet1").map(String::as_str),
            Some("web")
        );
        assert!(
            !v.interface_vms().contains_key("bw/eth0"),
            "a host interface has no VM"
        );
    }

    #[test]
    fn pages_follow_next_and_skip_what_was_dropped() {
        let v = VoView::new(10, Arc::default());
        for i in 0..25u64 {
            v.on_alert(&bw(i, i, i));
        }
        let p = v.page(0, 4);
        assert_eq!(
            (p.first, p.next, p.alerts.len()),
            (15, 19, 4),
            "only the last 10 are kept"
        );
        let p2 = v.page(p.next, 100);
        assert_eq!((p2.next, p2.alerts.len()), (25, 6));
        assert!(v.page(p2.next, 100).alerts.is_empty());
        assert_eq!(
            v.page(p2.next, 100).next,
            25,
            "an empty page keeps its place"
        );
        assert_eq!(
            v.recent(3).iter().map(|a| a.seq).collect::<Vec<_>>(),
            [22, 23, 24]
        );
    }

    #[test]
    fn reads_share_the_kept_alerts_instead_of_copying_them() {
        let v = VoView::new(10, Arc::default());
        v.on_alert(&bw(0, 1, 1));
        let conns = Alert {
            origin: "conns".into(),
            body: AlertBody::Connections {
                per_remote: vec![("10.0.0.1".parse().expect("ip"), 3)],
                rest_remotes: 0,
                rest_established: 0,
            },
            ..bw(1, 0, 0)
        };
        v.on_alert(&conns);
        let page = v.page(0, 10);
        let recent = v.recent(10);
        assert!(Arc::ptr_eq(&page.alerts[1].alert, &recent[1]));
        // The list, the connections table, this page and `recent`: one alert, four holders.
        assert_eq!(Arc::strong_count(&recent[1]), 4);
        assert_eq!(*recent[1], conns);
        assert_eq!(v.connections(), [("10.0.0.1".parse().expect("ip"), 3)]);
        // The page outlives the alert leaving the view: it still holds it, unchanged.
        for i in 2..20 {
            v.on_alert(&bw(i, i, i));
        }
        assert_eq!(
            Arc::strong_count(&recent[1]),
            3,
            "gone from the list, kept as the latest table"
        );
        assert_eq!(page.alerts[1].alert.origin, "conns");
    }
}
