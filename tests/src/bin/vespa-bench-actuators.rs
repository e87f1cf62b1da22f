//! Actuator benchmarks on real daemons (root; started and stopped by the test kit):
//!
//! - SDN block: os-ken + Open vSwitch (userspace datapath) with a UDP stream (one datagram
//!   every 200 µs) between two namespace hosts. For each of N blocks of the sending host's
//!   MAC: the time until the agent's call returns, until both drop flows are reported by
//!   the switch (`ovs-ofctl monitor`, timestamped as they arrive), and until the last datagram
//!   got through. Then release, and wait for traffic to flow again. Goal: p99 <= 20 ms.
//! - cut_link on a running KVM domain: the agent's call, which returns once libvirt reports
//!   the link down (read back from the live domain XML); connect_link likewise.
//!
//! `cargo run --release -p vespa-tests --bin vespa-bench-actuators -- --iterations 50`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use vespa_agents::libvirt::{LibvirtAgent, LibvirtConfig};
use vespa_agents::sdn::osken::{OsKen, OsKenConfig};
use vespa_agents::sdn::{BlockTarget, Release, SdnAgent, SdnAgentConfig, SdnController};
use vespa_agents::AlertSink;
use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
use vespa_tests::daemons::ovs::{FlowMonitor, SdnLab, UdpStream};
use vespa_tests::daemons::percentile;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the actuators on real daemons")]
struct Args {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Gap between datagrams of the measured UDP stream, in microseconds.
    #[arg(long, default_value_t = 200)]
    gap_us: u64,
    #[arg(long)]
    skip_sdn: bool,
    #[arg(long)]
    skip_libvirt: bool,
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str) -> Series {
        Series {
            name,
            samples: Vec::new(),
        }
    }

    fn report(&mut self) -> serde_json::Value {
        self.samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p99, max) = (
            percentile(&self.samples, 50.0),
            percentile(&self.samples, 99.0),
            self.samples.last().copied().unwrap_or_default(),
        );
        println!(
            "  {:<44} n={:<4} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
            self.name,
            self.samples.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
        serde_json::json!({ "name": self.name, "n": self.samples.len(), "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max) })
    }
}

fn bench_sdn(args: &Args) -> anyhow::Result<Vec<serde_json::Value>> {
    let lab = Arc::new(
        SdnLab::start()
            .map_err(anyhow::Error::msg)
            .context("starting Open vSwitch + os-ken")?,
    );
    let ns = lab.ovs.ns.name.clone();
    let (n, gap) = (args.iterations, Duration::from_micros(args.gap_us));
    let l = lab.clone();
    vespa_tests::net::in_netns(&ns, move || -> anyhow::Result<Vec<serde_json::Value>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let lab = l;
            let agent = SdnAgent::new(
                OsKen::new(OsKenConfig { url: lab.url(), ..OsKenConfig::default() }),
                SdnAgentConfig { default_ttl: None },
                AlertSink::none(),
            );
            let ctrl = agent.controller().clone();
            let monitor = FlowMonitor::start(&lab.ovs, &lab.bridge).map_err(anyhow::Error::msg)?;
            let stream = UdpStream::start(&lab.h1, &lab.h2, gap);
            let target: BlockTarget = lab.h1.mac.parse()?;
            let (src, dst) = (format!("dl_src={}", lab.h1.mac), format!("dl_dst={}", lab.h1.mac));
            let mut call = Series::new("block call returns");
            let mut flow = Series::new("block -> both drop flows in Open vSwitch");
            let mut stop = Series::new("block -> last datagram through");
            let mut release = Series::new("release -> drop flows removed");
            let wait = Duration::from_secs(10);
            for i in 0..n {
                stream
                    .wait_flowing(20, Duration::from_secs(20))
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("iteration {i}: traffic before the block"))?;
                let t0 = Instant::now();
                let id = ctrl.block(target, None).await?;
                call.samples.push(t0.elapsed());
                let a = monitor.wait("ADDED", &src, t0, wait).map_err(anyhow::Error::msg)?;
                let b = monitor.wait("ADDED", &dst, t0, wait).map_err(anyhow::Error::msg)?;
                flow.samples.push(a.max(b).duration_since(t0));
                let last = stream.wait_stopped(t0, Duration::from_millis(100), wait).map_err(anyhow::Error::msg)?;
                stop.samples.push(last.map_or(Duration::ZERO, |l| l.duration_since(t0)));
                let t1 = Instant::now();
                ctrl.release(Release::Id(id)).await?;
                let a = monitor.wait("DELETED", &src, t1, wait).map_err(anyhow::Error::msg)?;
                let b = monitor.wait("DELETED", &dst, t1, wait).map_err(anyhow::Error::msg)?;
                release.samples.push(a.max(b).duration_since(t1));
            }
            println!("SDN block (os-ken 1.4.1 ofctl_rest + Open vSwitch userspace datapath, UDP every {} us):", gap.as_micros());
            Ok(vec![call.report(), flow.report(), stop.report(), release.report()])
        })
    })
}

fn bench_libvirt(args: &Args) -> anyhow::Result<Vec<serde_json::Value>> {
    libvirtd()
        .map_err(anyhow::Error::msg)
        .context("starting libvirtd")?;
    let d = KvmDomain::start("vbench")
        .map_err(anyhow::Error::msg)
        .context("starting a KVM domain")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let a = LibvirtAgent::new(
            LibvirtConfig {
                watch_events: false,
                ..LibvirtConfig::new(URI)
            },
            AlertSink::none(),
        )?;
        // Warm the connection and libvirt's caches.
        a.set_link(&d.name, None, true).await?;
        let mut cut = Series::new("cut_link -> link down confirmed");
        let mut connect = Series::new("connect_link -> link up confirmed");
        for _ in 0..args.iterations {
            let t0 = Instant::now();
            let st = a.set_link(&d.name, None, false).await?;
            cut.samples.push(t0.elapsed());
            if st.iter().any(|s| s.up) {
                bail!("link still up after cut_link: {st:?}");
            }
            let t0 = Instant::now();
            a.set_link(&d.name, None, true).await?;
            connect.samples.push(t0.elapsed());
        }
        if d.link() != "up" {
            bail!("virsh disagrees: link {}", d.link());
        }
        println!("libvirt (qemu:///system, KVM domain, virtio NIC on a tap device):");
        Ok(vec![cut.report(), connect.report()])
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("the actuator benchmarks start daemons and namespaces: run as root");
    }
    let mut out = Vec::new();
    if !args.skip_sdn {
        out.extend(bench_sdn(&args)?);
    }
    if !args.skip_libvirt {
        out.extend(bench_libvirt(&args)?);
    }
    println!(
        "{}",
        serde_json::json!({ "bench": "actuators", "iterations": args.iterations, "results": out })
    );
    Ok(())
}
