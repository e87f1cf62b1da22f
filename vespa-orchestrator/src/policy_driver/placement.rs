//! Where a rule runs: at the VO (no `at`), or at a horizontal orchestrator whose layer holds
//! everything the rule touches (the fast path).
//!
//! A rule placed at an HO sees only the alerts of that HO's subtree and can only reach the
//! agents below it, so the place is checked against the topology when the policy is loaded,
//! never discovered when a block fails: the HO must exist, an agent below it must produce the
//! rule's metric, and every actuator its ladder uses (and undoes through) must be below it.

use vespa_node::config::NodeDef;
use vespa_node::{AgentKind, Role, Topology};
use vespa_policy::{Metric, Rule, Rules, Step, Via};

/// Checks the `at` of every rule of `rules` (actuator names already resolved) against
/// `topo`. The error names the rule and what is wrong, e.g. `rule "conn-flood": at =
/// "HO_VM" but its sdn actuator "Agent_Controller_OsKen" is under HO_PH`.
pub fn check(rules: &Rules, topo: &Topology) -> Result<(), String> {
    for rule in &rules.rules {
        if let Some(at) = rule.at.as_deref() {
            check_rule(rule, at, rules, topo)
                .map_err(|why| format!("rule {:?}: at = {at:?} {why}", rule.name))?;
        }
    }
    Ok(())
}

fn check_rule(rule: &Rule, at: &str, rules: &Rules, topo: &Topology) -> Result<(), String> {
    let ho = topo
        .node(at)
        .ok_or_else(|| format!("but {} has no node of that name", topo.source))?;
    if !ho.role.is_ho() {
        return Err(format!(
            "but {at} is of kind {}: a rule runs at an HO (kind ho_vm, ho_hy or ho_ph), or at the VO without `at`",
            ho.role
        ));
    }
    let (sensor, metric) = match rule.metric {
        Metric::Established => (AgentKind::Connections, "established"),
        Metric::SynRate => (AgentKind::Connections, "syn_rate"),
        Metric::RxBytes => (AgentKind::Bandwidth, "rx_bytes"),
        Metric::TxBytes => (AgentKind::Bandwidth, "tx_bytes"),
    };
    if !topo
        .nodes
        .iter()
        .any(|n| n.role == Role::Agent(sensor) && under(topo, n, at))
    {
        return Err(format!(
            "but no {} is under {at}: the rule would never see its {metric} counter",
            Role::Agent(sensor)
        ));
    }
    for (slot, name) in actuators(rule, rules) {
        let agent = topo
            .node(name)
            .ok_or_else(|| format!("but its {slot} actuator {name:?} is not in {}", topo.source))?;
        if !agent.role.is_agent() {
            return Err(format!(
                "but its {slot} actuator {name:?} is of kind {}, not an agent",
                agent.role
            ));
        }
        if !under(topo, agent, at) {
            let master = agent.master.as_deref().unwrap_or("nothing");
            return Err(format!("but its {slot} actuator {name} is under {master}: the action must stay within {at}'s layer"));
        }
    }
    Ok(())
}

/// The actuators a rule's ladder acts (and undoes) through, and the firewall agent its kernel
/// reflex runs in, each once: `(slot, agent name)`.
fn actuators<'a>(rule: &Rule, rules: &'a Rules) -> Vec<(&'static str, &'a str)> {
    let a = &rules.actuators;
    let firewall = || ("firewall", a.of(Via::Firewall));
    let mut out: Vec<(&'static str, &'a str)> = Vec::new();
    let reflex = rule.reflex.map(|_| firewall());
    for used in rule.ladder.iter().map(|step| match step {
        Step::Block { via: Via::Sdn, .. } => ("sdn", a.sdn.as_str()),
        Step::Block { .. } | Step::Throttle { .. } => firewall(),
        Step::CutLink | Step::Migrate => ("libvirt", a.libvirt.as_str()),
    }) {
        if !out.contains(&used) {
            out.push(used);
        }
    }
    out.extend(reflex.filter(|r| !out.contains(r)));
    out
}

/// Whether `node` is in the subtree of `ho` (below it, at any depth).
fn under(topo: &Topology, node: &NodeDef, ho: &str) -> bool {
    let mut at = node;
    for _ in 0..topo.nodes.len() {
        match at.master.as_deref() {
            Some(m) if m == ho => return true,
            Some(m) => match topo.node(m) {
                Some(next) => at = next,
                None => return false,
            },
            None => return false,
        }
    }
    false
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// VO; HO_VM with a connections agent and a libvirt agent; HO_PH with a connections agent
    /// and an SDN agent; HO_HY with nothing below it.
    pub(crate) const TOPOLOGY: &str = r#"
[settings]
key_file = "psk"

[[machine]]
name = "hv"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "hv"
port = 5150

[[node]]
name = "HO_VM"
kind = "ho_vm"
location = "hv"
master = "VO"
port = 5151

[[node]]
name = "HO_PH"
kind = "ho_ph"
location = "hv"
master = "VO"
port = 5152

[[node]]
name = "HO_HY"
kind = "ho_hy"
location = "hv"
master = "VO"
port = 5153

[[node]]
name = "vm_conns"
kind = "agent_connections"
location = "hv"
master = "HO_VM"
port = 5154

[[node]]
name = "Agent_Libvirt"
kind = "agent_libvirt"
location = "hv"
master = "HO_VM"
port = 5155

[[node]]
name = "ph_conns"
kind = "agent_connections"
location = "hv"
master = "HO_PH"
port = 5156

[[node]]
name = "Agent_Controller_OsKen"
kind = "agent_controller_osken"
location = "hv"
master = "HO_PH"
port = 5157
"#;

    fn policy(at: &str, metric: &str, ladder: &str, sdn: &str) -> String {
        format!(
            "[actuators]\nsdn = \"{sdn}\"\nlibvirt = \"Agent_Libvirt\"\nquarantine = \"q\"\nav = \"av\"\nhypervisor = \"hy\"\n\n\
             [[rule]]\nname = \"conn-flood\"\n{at}metric = \"{metric}\"\nkey = \"remote\"\nwindow_s = 1\nabove = 10\nbelow = 5\ncalm_s = 1\nladder = [{ladder}]\n"
        )
    }

    const BLOCK: &str = "{ action = \"block\", ttl_s = 60 }";

    fn checked(text: &str) -> Result<(), String> {
        let topo = Topology::from_toml("topology.toml", TOPOLOGY).expect("test topology");
        crate::policy_driver::load_rules(text, Some(&topo))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_rule_runs_at_an_ho_whose_layer_holds_its_sensor_and_actuators() {
        checked(&policy(
            "at = \"HO_PH\"\n",
            "established",
            BLOCK,
            "Agent_Controller_OsKen",
        ))
        .expect("SDN and connections agent under HO_PH");
        checked(&policy(
            "at = \"HO_VM\"\n",
            "syn_rate",
            "{ action = \"cut_link\" }, { action = \"migrate\" }",
            "x",
        ))
        .expect("libvirt under HO_VM");
        checked(&policy("", "established", BLOCK, "Agent_Controller_OsKen"))
            .expect("no `at`: the VO, anything goes");
        // A name the topology lacks falls back to its only agent of the kind, then is checked.
        checked(&policy(
            "at = \"HO_PH\"\n",
            "established",
            BLOCK,
            "Agent_Controller",
        ))
        .expect("the only SDN agent");
    }

    #[test]
    fn a_misplaced_rule_is_refused_naming_the_rule_and_the_reason() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "at = \"HO_VM\"\n",
                "established",
                BLOCK,
                "rule \"conn-flood\": at = \"HO_VM\" but its sdn actuator Agent_Controller_OsKen is under HO_PH: the action must stay within HO_VM's layer",
            ),
            ("at = \"HO_XX\"\n", "established", BLOCK, "rule \"conn-flood\": at = \"HO_XX\" but topology.toml has no node of that name"),
            ("at = \"VO\"\n", "established", BLOCK, "at = \"VO\" but VO is of kind vo"),
            ("at = \"ph_conns\"\n", "established", BLOCK, "but ph_conns is of kind agent_connections"),
            ("at = \"HO_PH\"\n", "rx_bytes", BLOCK, "but no agent_bandwidth is under HO_PH: the rule would never see its rx_bytes counter"),
            ("at = \"HO_HY\"\n", "established", BLOCK, "but no agent_connections is under HO_HY"),
            ("at = \"HO_PH\"\n", "established", "{ action = \"cut_link\" }", "its libvirt actuator Agent_Libvirt is under HO_VM"),
            ("at = \"HO_PH\"\n", "established", BLOCK, "its sdn actuator \"HO_PH\" is of kind ho_ph, not an agent"),
        ];
        for (i, (at, metric, ladder, want)) in cases.iter().enumerate() {
            let sdn = if i == cases.len() - 1 {
                "HO_PH"
            } else {
                "Agent_Controller_OsKen"
            };
            let e = checked(&policy(at, metric, ladder, sdn)).expect_err(want);
            assert!(
                e.contains(want),
                "{at:?} {metric} {ladder}:\n  got  {e}\n  want {want}"
            );
        }
        // A name neither in the topology nor with a single agent of its kind to fall back to.
        let two_sdn = TOPOLOGY.to_string()
            + "\n[[node]]\nname = \"fl\"\nkind = \"agent_controller_floodlight\"\nlocation = \"hv\"\nmaster = \"HO_PH\"\nport = 5158\n";
        let topo = Topology::from_toml("t2.toml", &two_sdn).expect("topology");
        let e = crate::policy_driver::load_rules(
            &policy("at = \"HO_PH\"\n", "established", BLOCK, "nope"),
            Some(&topo),
        )
        .expect_err("unknown actuator");
        assert!(
            e.to_string()
                .contains("its sdn actuator \"nope\" is not in t2.toml"),
            "{e}"
        );
    }
}
