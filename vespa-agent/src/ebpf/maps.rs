//! The maps user space reads, and reading them: counters summed over CPUs, the connection
//! and SYN tables, the health counters, the programs' configuration.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use aya::Ebpf;
use vespa_common::{Addr, IfaceStats, RemoteConns, SynCounter, IFACE_ARRAY_SLOTS};

use super::addr::{addr_of, ip_of};
use crate::{
    error::SensorError,
    readings::{RemoteConnections, SynSource},
};

pub(super) struct Maps {
    stats: PerCpuArray<MapData, IfaceStats>,
    stats_big: PerCpuHashMap<MapData, u32, IfaceStats>,
    conns: HashMap<MapData, Addr, RemoteConns>,
    syns: HashMap<MapData, Addr, SynCounter>,
    health: PerCpuArray<MapData, u64>,
    config: Array<MapData, vespa_common::SensorConfig>,
}

/// Takes the map `name` out of the object, as a `T`.
pub(super) fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, SensorError> {
    let map = ebpf
        .take_map(name)
        .ok_or(SensorError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| SensorError::Map {
        map: name,
        source: source.into(),
    })
}

fn read_err(map: &'static str, source: MapError) -> SensorError {
    SensorError::ReadMap {
        map,
        source: source.into(),
    }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps, SensorError> {
        Ok(Maps {
            stats: take(ebpf, "IFACE_STATS")?,
            stats_big: take(ebpf, "IFACE_STATS_BIG")?,
            conns: take(ebpf, "CONN_BY_REMOTE")?,
            syns: take(ebpf, "SYN_BY_SOURCE")?,
            health: take(ebpf, "STATS")?,
            config: take(ebpf, "CONFIG")?,
        })
    }

    /// Gives the programs their first configuration.
    pub(super) fn configure(&mut self, k: vespa_common::SensorConfig) -> Result<(), SensorError> {
        self.config.set(0, k, 0).map_err(|source| SensorError::Map {
            map: "CONFIG",
            source: source.into(),
        })
    }

    /// Changes the in-kernel thresholds; the programs read them on their next run.
    pub(super) fn set_thresholds(
        &mut self,
        conn: u64,
        syn_per_sec: u64,
    ) -> Result<(), SensorError> {
        let mut k = self.config.get(&0, 0).map_err(|e| read_err("CONFIG", e))?;
        k.conn_threshold = conn;
        k.syn_per_sec_threshold = syn_per_sec;
        self.config
            .set(0, k, 0)
            .map_err(|source| SensorError::UpdateMap {
                map: "CONFIG",
                source: source.into(),
            })
    }

    /// One interface's counters summed over CPUs.
    pub(super) fn read_stats(&self, ifindex: u32) -> Result<IfaceStats, SensorError> {
        let per_cpu = if ifindex < IFACE_ARRAY_SLOTS {
            self.stats.get(&ifindex, 0)
        } else {
            match self.stats_big.get(&ifindex, 0) {
                Err(MapError::KeyNotFound) => return Ok(IfaceStats::default()),
                other => other,
            }
        }
        .map_err(|e| read_err("IFACE_STATS", e))?;
        Ok(per_cpu
            .iter()
            .fold(IfaceStats::default(), |a, v| IfaceStats {
                rx_bytes: a.rx_bytes + v.rx_bytes,
                rx_packets: a.rx_packets + v.rx_packets,
                tx_bytes: a.tx_bytes + v.tx_bytes,
                tx_packets: a.tx_packets + v.tx_packets,
            }))
    }

    /// Zeroes an interface's counters (they start at attach; an ifindex may have been
    /// counted for a previous device).
    pub(super) fn reset_stats(&mut self, ifindex: u32) {
        if ifindex < IFACE_ARRAY_SLOTS {
            let zeros = aya::util::nr_cpus().ok().and_then(|n| {
                aya::maps::PerCpuValues::try_from(vec![IfaceStats::default(); n]).ok()
            });
            if let Some(z) = zeros {
                let _ = self.stats.set(ifindex, z, 0);
            }
        } else {
            let _ = self.stats_big.remove(&ifindex);
        }
    }

    pub(super) fn connections(&self) -> Result<Vec<RemoteConnections>, SensorError> {
        self.conns
            .iter()
            .map(|item| {
                item.map(|(k, v)| remote(ip_of(&k), &v))
                    .map_err(|e| read_err("CONN_BY_REMOTE", e))
            })
            .collect()
    }

    pub(super) fn connections_of(&self, addr: IpAddr) -> Result<RemoteConnections, SensorError> {
        match self.conns.get(&addr_of(addr), 0) {
            Ok(v) => Ok(remote(addr, &v)),
            Err(MapError::KeyNotFound) => Ok(RemoteConnections {
                addr,
                established: 0,
                opened: Some(0),
                closed: Some(0),
            }),
            Err(e) => Err(read_err("CONN_BY_REMOTE", e)),
        }
    }

    pub(super) fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        self.syns
            .iter()
            .map(|item| {
                item.map(|(k, v)| SynSource {
                    addr: ip_of(&k),
                    syns: v.total,
                })
                .map_err(|e| read_err("SYN_BY_SOURCE", e))
            })
            .collect()
    }

    /// A health counter (`STAT_*` slot) summed over CPUs; 0 if it cannot be read.
    pub(super) fn stat(&self, slot: u32) -> u64 {
        self.health
            .get(&slot, 0)
            .map(|v| v.iter().sum::<u64>())
            .unwrap_or(0)
    }

    /// Entries in use: (remote addresses, established connections) of the connection table.
    /// Every tracked open socket is counted once in its remote's `established`.
    pub(super) fn connection_fill(&self) -> (u64, u64) {
        let (mut remotes, mut open) = (0u64, 0u64);
        for (_, v) in self.conns.iter().flatten() {
            remotes += 1;
            open += v.established;
        }
        (remotes, open)
    }

    /// Entries in use of the SYN table.
    pub(super) fn syn_fill(&self) -> u64 {
        self.syns.keys().flatten().count() as u64
    }

    /// Entries in use of the counters of interfaces with large ifindexes.
    pub(super) fn big_ifindex_fill(&self) -> u64 {
        self.stats_big.keys().flatten().count() as u64
    }
}

fn remote(addr: IpAddr, v: &RemoteConns) -> RemoteConnections {
    RemoteConnections {
        addr,
        established: v.established,
        // The kernel counts only established and closed: every counted open is either still
        // established or closed since (a close is only counted for an open it saw).
        opened: Some(v.established + v.closed),
        closed: Some(v.closed),
    }
}
