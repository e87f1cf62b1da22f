//! `--check-config` output: the resolved tree, one node per line.

use std::fmt::Write as _;

use super::Topology;

pub(super) fn render(topo: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} machine(s), {} node(s)",
        topo.source,
        topo.machines.len(),
        topo.nodes.len()
    );
    for m in &topo.machines {
        let _ = writeln!(out, "machine {} {}", m.name, m.address);
    }
    let vo = topo.vo();
    line(topo, &mut out, vo, "", "");
    children(topo, &mut out, &vo.name, "");
    let _ = writeln!(out, "key file: {}", topo.settings.key_file.display());
    out
}

fn children(topo: &Topology, out: &mut String, name: &str, prefix: &str) {
    let kids: Vec<_> = topo.children_of(name).collect();
    for (i, kid) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        line(topo, out, kid, prefix, if last { "`-- " } else { "|-- " });
        let deeper = format!("{prefix}{}", if last { "    " } else { "|   " });
        children(topo, out, &kid.name, &deeper);
    }
}

fn line(topo: &Topology, out: &mut String, n: &super::NodeDef, prefix: &str, branch: &str) {
    let _ = writeln!(
        out,
        "{prefix}{branch}{} ({}) on {} at {}",
        n.name,
        n.role,
        n.location,
        topo.listen_addr(n)
    );
}
