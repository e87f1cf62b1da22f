//! The firewall's tables (`vespa-ebpf/src/firewall.rs`) from user space: blocks, throttles,
//! the allowlist, the reflex's settings, the totals, and reaping what expired.
//!
//! Kernel times are CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`. Which tables hold
//! entries is kept in `FW_CONFIG.active`, so the programs skip the empty ones: every change
//! recomputes it from the tables.

use std::{net::IpAddr, time::Duration};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, PerCpuArray,
};
use aya::Ebpf;
use vespa_agents::firewall::{BlockInfo, FirewallStats, ReflexSettings, ThrottleInfo};
use vespa_common::{
    BlockEntry, FirewallConfig, MacKey, ThrottleEntry, BLOCK_REFLEX, FW_ACTIVE_ALLOW_IP,
    FW_ACTIVE_ALLOW_MAC, FW_ACTIVE_BLOCK_IP, FW_ACTIVE_BLOCK_MAC, FW_ACTIVE_THROTTLE_DEV,
    FW_ACTIVE_THROTTLE_IP, FW_ACTIVE_THROTTLE_MAC, FW_COUNT_REFLEX_INSERTED, FW_STAT_ALLOWED,
    FW_STAT_BLOCK_BYTES, FW_STAT_BLOCK_PACKETS, FW_STAT_REFLEX_CAPPED, FW_STAT_REFLEX_PROTECTED,
    FW_STAT_THROTTLE_BYTES, FW_STAT_THROTTLE_PACKETS, FW_STAT_XDP_PACKETS,
};
use vespa_proto::verbs::{MacAddr, Rate, Shaped, Target};

use super::{addr::addr_of, maps::take};
use crate::{clock::monotonic_ns, error::SensorError};

type Trie<V> = LpmTrie<MapData, [u8; 16], V>;

pub(crate) struct Tables {
    config: Array<MapData, FirewallConfig>,
    stats: PerCpuArray<MapData, u64>,
    counts: Array<MapData, u64>,
    block_ip: Trie<BlockEntry>,
    block_mac: HashMap<MapData, MacKey, BlockEntry>,
    allow_ip: Trie<u32>,
    allow_mac: HashMap<MapData, MacKey, u32>,
    throttle_ip: Trie<ThrottleEntry>,
    throttle_mac: HashMap<MapData, MacKey, ThrottleEntry>,
    throttle_dev: HashMap<MapData, u32, ThrottleEntry>,
    block_capacity: u32,
}

fn update(map: &'static str) -> impl Fn(aya::maps::MapError) -> SensorError {
    move |source| SensorError::UpdateMap {
        map,
        source: source.into(),
    }
}

fn read(map: &'static str) -> impl Fn(aya::maps::MapError) -> SensorError {
    move |source| SensorError::ReadMap {
        map,
        source: source.into(),
    }
}

/// The kernel's key of an address or prefix: IPv4 mapped into IPv6, length counted on the
/// 16-byte form.
fn ip_key(t: &Target) -> Option<Key<[u8; 16]>> {
    let (addr, len) = match t {
        Target::Ip(ip) => (*ip, if ip.is_ipv4() { 32 } else { 128 }),
        Target::Net(p) => (p.addr, p.len),
        Target::Mac(_) => return None,
    };
    let extra = if addr_of(addr).bytes[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        96
    } else {
        0
    };
    Some(Key::new(len as u32 + extra, addr_of(addr).bytes))
}

/// The target a kernel key stands for.
fn target_of(key: &Key<[u8; 16]>) -> Target {
    let bytes = key.data();
    let ip = super::addr::ip_of(&vespa_common::Addr { bytes });
    let len = key.prefix_len();
    let len = if ip.is_ipv4() {
        len.saturating_sub(96)
    } else {
        len
    };
    Target::prefix(ip, len.min(128) as u8).unwrap_or(Target::Ip(ip))
}

fn mac_key(t: &Target) -> Option<MacKey> {
    match t {
        Target::Mac(MacAddr(mac)) => Some(MacKey {
            mac: *mac,
            _pad: [0; 2],
        }),
        _ => None,
    }
}

fn remaining(expires_ns: u64, now: u64) -> Option<u64> {
    (expires_ns != 0).then(|| expires_ns.saturating_sub(now) / 1_000_000)
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| {
        monotonic_ns() + t.as_nanos().min(u64::MAX as u128 / 2) as u64
    })
}

fn block_info(target: Target, e: &BlockEntry, now: u64) -> BlockInfo {
    BlockInfo {
        target,
        expires_in_ms: remaining(e.expires_ns, now),
        reflex: e.flags & BLOCK_REFLEX != 0,
        packets: e.packets,
        bytes: e.bytes,
        first_drop_after_ns: (e.first_drop_ns != 0)
            .then(|| e.first_drop_ns.saturating_sub(e.created_ns)),
        created_ns: e.created_ns,
    }
}

fn expired(expires_ns: u64, now: u64) -> bool {
    expires_ns != 0 && now >= expires_ns
}

impl Tables {
    pub(super) fn take(ebpf: &mut Ebpf, block_capacity: u32) -> Result<Tables, SensorError> {
        Ok(Tables {
            config: take(ebpf, "FW_CONFIG")?,
            stats: take(ebpf, "FW_STATS")?,
            counts: take(ebpf, "FW_COUNTS")?,
            block_ip: take(ebpf, "FW_BLOCK_IP")?,
            block_mac: take(ebpf, "FW_BLOCK_MAC")?,
            allow_ip: take(ebpf, "FW_ALLOW_IP")?,
            allow_mac: take(ebpf, "FW_ALLOW_MAC")?,
            throttle_ip: take(ebpf, "FW_THROTTLE_IP")?,
            throttle_mac: take(ebpf, "FW_THROTTLE_MAC")?,
            throttle_dev: take(ebpf, "FW_THROTTLE_DEV")?,
            block_capacity,
        })
    }

    fn config(&self) -> Result<FirewallConfig, SensorError> {
        self.config.get(&0, 0).map_err(read("FW_CONFIG"))
    }

    fn set_config(&mut self, c: FirewallConfig) -> Result<(), SensorError> {
        self.config.set(0, c, 0).map_err(update("FW_CONFIG"))
    }

    /// Recomputes which tables hold entries (a table the reflex may fill counts as holding).
    fn refresh_active(&mut self) -> Result<(), SensorError> {
        let mut c = self.config()?;
        let mut active = 0;
        let reflex = c.reflex_syn_per_sec != 0 || c.reflex_conn != 0;
        for (bit, used) in [
            (
                FW_ACTIVE_BLOCK_IP,
                reflex || self.block_ip.keys().next().is_some(),
            ),
            (FW_ACTIVE_BLOCK_MAC, self.block_mac.keys().next().is_some()),
            (FW_ACTIVE_ALLOW_IP, self.allow_ip.keys().next().is_some()),
            (FW_ACTIVE_ALLOW_MAC, self.allow_mac.keys().next().is_some()),
            (
                FW_ACTIVE_THROTTLE_IP,
                self.throttle_ip.keys().next().is_some(),
            ),
            (
                FW_ACTIVE_THROTTLE_MAC,
                self.throttle_mac.keys().next().is_some(),
            ),
            (
                FW_ACTIVE_THROTTLE_DEV,
                self.throttle_dev.keys().next().is_some(),
            ),
        ] {
            if used {
                active |= bit;
            }
        }
        if c.active != active {
            c.active = active;
            self.set_config(c)?;
        }
        Ok(())
    }

    pub(crate) fn block(&mut self, t: Target, ttl: Option<Duration>) -> Result<(), SensorError> {
        let fresh = BlockEntry {
            expires_ns: expiry(ttl),
            created_ns: monotonic_ns(),
            ..BlockEntry::default()
        };
        if let Some(key) = ip_key(&t) {
            // A block placed again keeps its counters (and its reflex mark): the kernel may
            // add to them between the read and the write, a few packets at most.
            let entry = match self.block_ip.get(&key, 0) {
                Ok(old) => BlockEntry {
                    expires_ns: fresh.expires_ns,
                    ..old
                },
                Err(_) => fresh,
            };
            self.block_ip
                .insert(&key, entry, 0)
                .map_err(update("FW_BLOCK_IP"))?;
        } else if let Some(key) = mac_key(&t) {
            let entry = match self.block_mac.get(&key, 0) {
                Ok(old) => BlockEntry {
                    expires_ns: fresh.expires_ns,
                    ..old
                },
                Err(_) => fresh,
            };
            self.block_mac
                .insert(key, entry, 0)
                .map_err(update("FW_BLOCK_MAC"))?;
        }
        self.refresh_active()
    }

    /// Removes a block; counts the reflex's blocks removed so its cap frees up.
    pub(crate) fn unblock(&mut self, t: Target) -> Result<bool, SensorError> {
        let removed = if let Some(key) = ip_key(&t) {
            match self.block_ip.get(&key, 0) {
                Ok(e) => {
                    self.block_ip.remove(&key).map_err(update("FW_BLOCK_IP"))?;
                    Some(e)
                }
                Err(_) => None,
            }
        } else if let Some(key) = mac_key(&t) {
            match self.block_mac.get(&key, 0) {
                Ok(e) => {
                    self.block_mac
                        .remove(&key)
                        .map_err(update("FW_BLOCK_MAC"))?;
                    Some(e)
                }
                Err(_) => None,
            }
        } else {
            None
        };
        if let Some(e) = &removed {
            self.forget_reflex(std::slice::from_ref(e))?;
        }
        self.refresh_active()?;
        Ok(removed.is_some())
    }

    fn forget_reflex(&mut self, gone: &[BlockEntry]) -> Result<(), SensorError> {
        let n = gone.iter().filter(|e| e.flags & BLOCK_REFLEX != 0).count() as u64;
        if n > 0 {
            let mut c = self.config()?;
            c.reflex_removed += n;
            self.set_config(c)?;
        }
        Ok(())
    }

    pub(crate) fn blocks(&self) -> Result<Vec<BlockInfo>, SensorError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for kv in self.block_ip.iter() {
            let (k, e) = kv.map_err(read("FW_BLOCK_IP"))?;
            out.push(block_info(target_of(&k), &e, now));
        }
        for kv in self.block_mac.iter() {
            let (k, e) = kv.map_err(read("FW_BLOCK_MAC"))?;
            out.push(block_info(Target::Mac(MacAddr(k.mac)), &e, now));
        }
        out.sort_by_key(|b| b.created_ns);
        Ok(out)
    }

    fn throttle_entry(rate: Rate, ttl: Option<Duration>) -> ThrottleEntry {
        let (rate, per_packet) = match rate {
            Rate::Bytes(b) => (b, 0),
            Rate::Packets(p) => (p, 1),
        };
        // The burst: 50 ms at the rate, and at least ten full-size packets (or ten
        // packets), so a TCP stream can reach the rate rather than saw-tooth under it.
        let unit_ns = 1_000_000_000 / rate.max(1);
        let burst_ns =
            (50_000_000u64).max(unit_ns.saturating_mul(if per_packet == 1 { 10 } else { 15_000 }));
        ThrottleEntry {
            rate,
            burst_ns,
            expires_ns: expiry(ttl),
            per_packet,
            ..ThrottleEntry::default()
        }
    }

    pub(crate) fn throttle(
        &mut self,
        target: &Shaped,
        ifindex: Option<u32>,
        rate: Rate,
        ttl: Option<Duration>,
    ) -> Result<(), SensorError> {
        let e = Self::throttle_entry(rate, ttl);
        match target {
            Shaped::Source(t) => {
                if let Some(key) = ip_key(t) {
                    self.throttle_ip
                        .insert(&key, e, 0)
                        .map_err(update("FW_THROTTLE_IP"))?;
                } else if let Some(key) = mac_key(t) {
                    self.throttle_mac
                        .insert(key, e, 0)
                        .map_err(update("FW_THROTTLE_MAC"))?;
                }
            }
            Shaped::Device(_) => {
                let ifindex = ifindex.unwrap_or(0);
                self.throttle_dev
                    .insert(ifindex, e, 0)
                    .map_err(update("FW_THROTTLE_DEV"))?;
            }
        }
        self.refresh_active()
    }

    pub(crate) fn unthrottle(
        &mut self,
        target: &Shaped,
        ifindex: Option<u32>,
    ) -> Result<bool, SensorError> {
        let removed = match target {
            Shaped::Source(t) => {
                if let Some(key) = ip_key(t) {
                    self.throttle_ip.remove(&key).is_ok()
                } else if let Some(key) = mac_key(t) {
                    self.throttle_mac.remove(&key).is_ok()
                } else {
                    false
                }
            }
            Shaped::Device(_) => self.throttle_dev.remove(&ifindex.unwrap_or(0)).is_ok(),
        };
        self.refresh_active()?;
        Ok(removed)
    }

    /// Throttles, with the device ones named by `name_of(ifindex)`.
    pub(crate) fn throttles(
        &self,
        name_of: impl Fn(u32) -> String,
    ) -> Result<Vec<ThrottleInfo>, SensorError> {
        let now = monotonic_ns();
        let info = |target: Shaped, e: &ThrottleEntry| ThrottleInfo {
            target,
            rate: if e.per_packet != 0 {
                Rate::Packets(e.rate)
            } else {
                Rate::Bytes(e.rate)
            },
            expires_in_ms: remaining(e.expires_ns, now),
            passed_packets: e.passed_packets,
            passed_bytes: e.passed_bytes,
            dropped_packets: e.dropped_packets,
            dropped_bytes: e.dropped_bytes,
        };
        let mut out = Vec::new();
        for kv in self.throttle_ip.iter() {
            let (k, e) = kv.map_err(read("FW_THROTTLE_IP"))?;
            out.push(info(Shaped::Source(target_of(&k)), &e));
        }
        for kv in self.throttle_mac.iter() {
            let (k, e) = kv.map_err(read("FW_THROTTLE_MAC"))?;
            out.push(info(Shaped::Source(Target::Mac(MacAddr(k.mac))), &e));
        }
        for kv in self.throttle_dev.iter() {
            let (k, e) = kv.map_err(read("FW_THROTTLE_DEV"))?;
            out.push(info(Shaped::Device(name_of(k)), &e));
        }
        Ok(out)
    }

    pub(crate) fn allow(&mut self, t: Target) -> Result<(), SensorError> {
        if let Some(key) = ip_key(&t) {
            self.allow_ip
                .insert(&key, 1, 0)
                .map_err(update("FW_ALLOW_IP"))?;
        } else if let Some(key) = mac_key(&t) {
            self.allow_mac
                .insert(key, 1, 0)
                .map_err(update("FW_ALLOW_MAC"))?;
        }
        self.refresh_active()
    }

    pub(crate) fn disallow(&mut self, t: Target) -> Result<bool, SensorError> {
        let removed = if let Some(key) = ip_key(&t) {
            self.allow_ip.remove(&key).is_ok()
        } else if let Some(key) = mac_key(&t) {
            self.allow_mac.remove(&key).is_ok()
        } else {
            false
        };
        self.refresh_active()?;
        Ok(removed)
    }

    pub(crate) fn allowed(&self) -> Result<Vec<Target>, SensorError> {
        let mut out = Vec::new();
        for k in self.allow_ip.keys() {
            out.push(target_of(&k.map_err(read("FW_ALLOW_IP"))?));
        }
        for k in self.allow_mac.keys() {
            out.push(Target::Mac(MacAddr(k.map_err(read("FW_ALLOW_MAC"))?.mac)));
        }
        Ok(out)
    }

    pub(crate) fn set_reflex(&mut self, r: ReflexSettings) -> Result<(), SensorError> {
        let mut c = self.config()?;
        c.reflex_syn_per_sec = r.syn_per_sec;
        c.reflex_conn = r.conn;
        c.reflex_ttl_ns = r.ttl.map_or(0, |t| t.as_nanos() as u64);
        c.reflex_max = r.max;
        c.reflex_v6_prefix = r.v6_prefix as u32;
        self.set_config(c)?;
        self.refresh_active()
    }

    fn reflex(&self) -> Result<ReflexSettings, SensorError> {
        let c = self.config()?;
        Ok(ReflexSettings {
            syn_per_sec: c.reflex_syn_per_sec,
            conn: c.reflex_conn,
            ttl: (c.reflex_ttl_ns != 0).then(|| Duration::from_nanos(c.reflex_ttl_ns)),
            max: c.reflex_max,
            v6_prefix: c.reflex_v6_prefix as u8,
        })
    }

    /// Removes what expired; returns the blocks removed and the devices whose throttle went.
    pub(crate) fn reap(&mut self) -> Result<(Vec<BlockInfo>, Vec<u32>), SensorError> {
        let now = monotonic_ns();
        let mut gone_ip = Vec::new();
        for kv in self.block_ip.iter() {
            let (k, e) = kv.map_err(read("FW_BLOCK_IP"))?;
            if expired(e.expires_ns, now) {
                gone_ip.push((k, e));
            }
        }
        let mut gone_mac = Vec::new();
        for kv in self.block_mac.iter() {
            let (k, e) = kv.map_err(read("FW_BLOCK_MAC"))?;
            if expired(e.expires_ns, now) {
                gone_mac.push((k, e));
            }
        }
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for (k, e) in gone_ip {
            if self.block_ip.remove(&k).is_ok() {
                out.push(block_info(target_of(&k), &e, now));
                entries.push(e);
            }
        }
        for (k, e) in gone_mac {
            if self.block_mac.remove(&k).is_ok() {
                out.push(block_info(Target::Mac(MacAddr(k.mac)), &e, now));
                entries.push(e);
            }
        }
        self.forget_reflex(&entries)?;
        let stale_ip: Vec<_> = self
            .throttle_ip
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| expired(e.expires_ns, now))
            .map(|(k, _)| k)
            .collect();
        for k in stale_ip {
            let _ = self.throttle_ip.remove(&k);
        }
        let stale_mac: Vec<_> = self
            .throttle_mac
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| expired(e.expires_ns, now))
            .map(|(k, _)| k)
            .collect();
        for k in stale_mac {
            let _ = self.throttle_mac.remove(&k);
        }
        let stale_dev: Vec<_> = self
            .throttle_dev
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| expired(e.expires_ns, now))
            .map(|(k, _)| k)
            .collect();
        for k in &stale_dev {
            let _ = self.throttle_dev.remove(k);
        }
        self.refresh_active()?;
        Ok((out, stale_dev))
    }

    fn stat(&self, slot: u32) -> u64 {
        self.stats
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub(crate) fn stats(&self) -> Result<FirewallStats, SensorError> {
        let blocks = (self.block_ip.keys().count() + self.block_mac.keys().count()) as u64;
        Ok(FirewallStats {
            dropped_packets: self.stat(FW_STAT_BLOCK_PACKETS),
            dropped_bytes: self.stat(FW_STAT_BLOCK_BYTES),
            throttled_packets: self.stat(FW_STAT_THROTTLE_PACKETS),
            throttled_bytes: self.stat(FW_STAT_THROTTLE_BYTES),
            protected_passed: self.stat(FW_STAT_ALLOWED),
            reflex_protected: self.stat(FW_STAT_REFLEX_PROTECTED),
            reflex_capped: self.stat(FW_STAT_REFLEX_CAPPED),
            xdp_dropped_packets: self.stat(FW_STAT_XDP_PACKETS),
            reflex_placed: self
                .counts
                .get(&FW_COUNT_REFLEX_INSERTED, 0)
                .map_err(read("FW_COUNTS"))?,
            blocks,
            block_capacity: self.block_capacity as u64,
            throttles: (self.throttle_ip.keys().count()
                + self.throttle_mac.keys().count()
                + self.throttle_dev.keys().count()) as u64,
            allowed: (self.allow_ip.keys().count() + self.allow_mac.keys().count()) as u64,
            reflex: self.reflex()?,
        })
    }
}

/// The target a reflex event names: its address, or the prefix it was aggregated to.
pub(super) fn reflex_target(addr: IpAddr, prefix_len: u32) -> Target {
    let len = if addr.is_ipv4() {
        prefix_len.saturating_sub(96)
    } else {
        prefix_len
    };
    Target::prefix(addr, len.min(128) as u8).unwrap_or(Target::Ip(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for s in [
            "10.1.2.3",
            "10.1.2.0/24",
            "2001:db8::/64",
            "2001:db8::7",
            "0.0.0.0/0",
        ] {
            let t: Target = vespa_proto::verbs::Word::parse_word(s).unwrap();
            let k = ip_key(&t).unwrap();
            assert_eq!(target_of(&k), t, "{s}");
        }
        let p: vespa_proto::verbs::Prefix = "10.1.2.0/24".parse().unwrap();
        assert_eq!(ip_key(&Target::Net(p)).unwrap().prefix_len(), 120);
    }
}
