//! VESPA orchestrators. The node runtime (agent -> HO -> VO over the authenticated protocol)
//! lands here; until then the binary only describes itself.

use clap::Parser;

/// Horizontal (HO_VM, HO_HY, HO_PH) and vertical (VO) orchestrators of VESPA.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    eprintln!("vespa-orchestrator: the node runtime is not built yet; see README.md");
    Ok(())
}
