//! The closed loop with no SDN controller anywhere: the VO's policy blocks a connection flood
//! through the host's own firewall agent, and releases it when calm returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vespa_testkit::wait_until;

use super::lab::{syn_policy, Lab, Stream};
use crate::kit::*;

#[test]
fn the_vo_blocks_a_connection_flood_with_the_hosts_firewall_alone() {
    if !vespa_tests::privileged("the_vo_blocks_a_connection_flood_with_the_hosts_firewall_alone") {
        return;
    }
    let mut lab = Lab::new(
        "fw-loop",
        "",
        vec![N::new("conn", "agent_connections", Some("VO"), 4162)],
    );
    let policy = vespa_tests::sdn_loop::conn_flood_policy_via("fw", 30, 5, 2);
    let policy_file = lab.tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy).expect("policy file");
    lab.start_vo(&["--policy", &policy_file.display().to_string()]);
    let _agent = lab.start_agent("agent", &["--conn-threshold", "30"], &["fw", "bw", "conn"]);
    let (a, v) = (lab.attacker(), lab.victim());
    let stream = lab.attack_stream(7001);

    let server = SocketAddr::new(v.end.v4.into(), 7070);
    let listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(server, 1024));
    let held = a
        .ns
        .run(move || vespa_tests::traffic::tcp_connect_up_to(server, 80, Duration::from_secs(1)));
    assert!(held.len() > 30, "{} connections", held.len());

    let attacker = a.end.v4.to_string();
    let block = wait_until("the VO's block in the host's kernel", WAIT, || {
        lab.blocks()
            .into_iter()
            .find(|b| b["target"].as_str() == Some(attacker.as_str()) || b["reflex"] == false)
    });
    assert_eq!(block["reflex"], false, "{block}");
    assert_eq!(
        stream.arrivals_over_next(300),
        0,
        "the attacker's datagrams still arrive"
    );
    let vo = lab.vo.as_ref().expect("VO");
    let sent = wait_until("the VO's block request", WAIT, || {
        vo.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "policy action done")
    });
    assert_eq!(sent["fields"]["verb"], "block_hackers", "{sent}");

    // Calm: the victim's side resets every connection; after calm_s the VO releases.
    let t_calm = Instant::now();
    drop(held);
    drop(listener);
    stream.wait_flowing(50);
    assert!(
        t_calm.elapsed() >= Duration::from_secs(2),
        "released before calm_s"
    );
    wait_until("the block gone from the kernel", WAIT, || {
        lab.blocks().is_empty().then_some(())
    });
}

#[test]
fn a_reflex_block_is_listed_by_the_vo_and_released_through_its_api() {
    if !vespa_tests::privileged("a_reflex_block_is_listed_by_the_vo_and_released_through_its_api") {
        return;
    }
    let mut lab = Lab::new("fw-reflex-vo", "", vec![]);
    let threshold = 40u64;
    let policy = syn_policy(&format!(
        "above = {threshold}\nbelow = 5\ncalm_s = 3600\ncooldown_s = 1\nverify_s = 0\nreflex = true\n\
         ladder = [{{ action = \"block\", ttl_s = 600 }}]"
    ));
    let dir = lab.tree.scratch.dir.clone();
    std::fs::write(dir.join("policy.toml"), policy).expect("policy file");
    let token = "reflex-test-token";
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("api-token"))
            .expect("token file");
        std::io::Write::write_all(&mut f, token.as_bytes()).expect("token");
    }
    let api: SocketAddr = "127.0.0.1:8190".parse().expect("addr");
    lab.start_vo(&[
        "--policy",
        &dir.join("policy.toml").display().to_string(),
        "--http",
        &api.to_string(),
        "--api-token-file",
        &dir.join("api-token").display().to_string(),
    ]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    // The VO gives the firewall its reflex.
    wait_until("the VO's reflex in the kernel", WAIT, || {
        let s = lab.call("fw", "firewall_stats", &[]).ok()?;
        let s: serde_json::Value = serde_json::from_str(&s).ok()?;
        (s["reflex"]["syn_per_sec"] == threshold).then_some(())
    });
    let (a, v) = (lab.attacker(), lab.victim());
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let _listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    let from: std::net::IpAddr = a.end.v4.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from, victim, 500));
    let attacker = a.end.v4.to_string();
    let b = wait_until("the reflex's block", WAIT, || lab.block_of(&attacker));
    assert_eq!(b["reflex"], true, "{b}");

    let host = lab.net.host.name.clone();
    let get = move |path: &str| {
        let path = path.to_string();
        vespa_tests::net::in_netns(&host, move || {
            vespa_tests::daemons::http_request(api, "GET", &path, None, "")
        })
    };
    let listed =
        vespa_testkit::try_wait_until("the reflex block among the VO's decisions", WAIT, || {
            let (status, body) = get("/api/v1/decisions").ok_or(None)?;
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|_| Some(body.clone()))?;
            if status != 200 {
                return Err(Some(body));
            }
            v.as_array()
                .or_else(|| v["actions"].as_array())
                .and_then(|a| {
                    a.iter()
                        .find(|d| d["target"].as_str().is_some_and(|t| t.contains(&attacker)))
                        .cloned()
                })
                .ok_or(Some(body))
        })
        .unwrap_or_else(|e| {
            let vo = lab.vo.as_ref().map(Proc::log_text).unwrap_or_default();
            panic!("{e}\nVO log:\n{vo}")
        });
    let key = listed["key"].as_str().expect("key").to_string();
    let host = lab.net.host.name.clone();
    let (status, body) = vespa_tests::net::in_netns(&host, move || {
        vespa_tests::daemons::http_request(
            api,
            "DELETE",
            &format!("/api/v1/decisions/{key}"),
            Some(token),
            "",
        )
    })
    .expect("DELETE answered");
    assert_eq!(status, 200, "{body}");
    wait_until("the reflex block gone from the kernel", WAIT, || {
        lab.block_of(&attacker).is_none().then_some(())
    });
}

#[test]
fn a_flooding_gateway_is_never_blocked_a_reached_cap_is_alerted_and_a_v6_allocation_stays_blocked()
{
    if !vespa_tests::privileged(
        "a_flooding_gateway_is_never_blocked_a_reached_cap_is_alerted_and_a_v6_allocation_stays_blocked",
    ) {
        return;
    }
    let mut lab = Lab::new(
        "fw-caps",
        "",
        vec![N::new("conn", "agent_connections", Some("VO"), 4162)],
    );
    // The attacker's IPv4 address is the host's default gateway: only the firewall agent on
    // the host knows that, and the VO learns it from the agent.
    let gateway = lab.attacker().end.v4;
    let mut o = gateway.octets();
    o[3] = 254;
    let host_v4 = std::net::Ipv4Addr::from(o);
    lab.net
        .host
        .ip(&["addr", "add", &format!("{host_v4}/24"), "dev", "br0"]);
    lab.net
        .host
        .ip(&["route", "add", "default", "via", &gateway.to_string()]);
    let policy = syn_policy(
        "above = 40\nbelow = 5\ncalm_s = 3600\ncooldown_s = 1\nverify_s = 0\nv6_prefix = 64\n\
         max_blocks = 1\nladder = [{ action = \"block\", ttl_s = 600 }]",
    );
    let policy_file = lab.tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy).expect("policy file");
    lab.start_vo(&["--policy", &policy_file.display().to_string()]);
    let _agent = lab.start_agent("agent", &["--syn-threshold", "40"], &["fw", "bw", "conn"]);
    let vo = lab.vo.as_ref().expect("VO");
    let vo_says = |message: &str| {
        vo.log_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect::<Vec<_>>()
    };
    let learned = wait_until("the VO learning the agent's own protections", WAIT, || {
        vo_says("firewall agent's own protections learned")
            .into_iter()
            .next()
    });
    assert!(
        learned["fields"]["protected"].as_u64().unwrap_or(0) >= 2,
        "{learned}"
    );
    let (a, v) = (lab.attacker(), lab.victim());
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let _listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    let victim6 = SocketAddr::new(v.end.v6.into(), 8080);
    let _listener6 =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim6, 4096));

    // The gateway floods first, then the same guest from its IPv6 address.
    let from: std::net::IpAddr = gateway.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from, victim, 400));
    let from6: std::net::IpAddr = a.end.v6.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from6, victim6, 400));
    let (net64, rotated) = lab.attacker_v6_rotated();
    let b = wait_until("the /64 block in the kernel", WAIT, || lab.block_of(&net64));
    assert_eq!(b["reflex"], false, "{b}");
    // Alerts of one origin are handled in order: the gateway's came first, and was never
    // proposed, let alone placed.
    let sent = vo_says("policy block sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent.iter().all(|l| !l["fields"]["target"]
            .to_string()
            .contains(&gateway.to_string())),
        "{sent:?}"
    );
    assert!(
        lab.block_of(&gateway.to_string()).is_none(),
        "{:?}",
        lab.blocks()
    );

    // A rotated address inside the allocation stays blocked: its datagrams never arrive.
    let to = SocketAddr::new(v.end.v6.into(), 7002);
    let stream = Stream::start(&a.ns, rotated.into(), &v.ns, to);
    assert_eq!(
        stream.arrivals_over_next(100),
        0,
        "a rotated address inside {net64} got through"
    );

    // The victim floods in turn: the rule holds its one block, so the cap is reached and
    // alerted, and nothing is evicted.
    let from: std::net::IpAddr = v.end.v4.into();
    let to = SocketAddr::new(a.end.v4.into(), 8080);
    v.ns.run(move || vespa_tests::traffic::syn_burst(from, to, 400));
    let capped = wait_until("the cap's alert", WAIT, || {
        vo_says("policy alert")
            .into_iter()
            .find(|l| l["fields"]["text"].to_string().contains("cap reached"))
    });
    let text = capped["fields"]["text"].to_string();
    assert!(
        text.contains("max_blocks = 1") && text.contains(&v.end.v4.to_string()),
        "{capped}"
    );
    let blocks = lab.blocks();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["target"], net64.as_str(), "{blocks:?}");
}

/// Reconciliation against the kernel: a block the VO placed through the firewall agent,
/// removed behind its back with the agent's own verb, is back in the kernel at the next
/// pass, counted as missing.
#[test]
fn a_kernel_block_removed_behind_the_vos_back_is_reapplied() {
    if !vespa_tests::privileged("a_kernel_block_removed_behind_the_vos_back_is_reapplied") {
        return;
    }
    let mut lab = Lab::new("fw-reconcile", "", vec![]);
    let policy = format!(
        "{}\n[reconcile]\nevery_s = 1\n",
        syn_policy(
            "above = 1000000\nbelow = 5\ncalm_s = 3600\ncooldown_s = 1\nverify_s = 0\n\
             ladder = [{ action = \"block\", ttl_s = 600 }]"
        )
    );
    let dir = lab.tree.scratch.dir.clone();
    std::fs::write(dir.join("policy.toml"), policy).expect("policy file");
    let token = "reconcile-fw-token";
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("api-token"))
            .expect("token file");
        std::io::Write::write_all(&mut f, token.as_bytes()).expect("token");
    }
    let api: SocketAddr = "127.0.0.1:8190".parse().expect("addr");
    lab.start_vo(&[
        "--policy",
        &dir.join("policy.toml").display().to_string(),
        "--http",
        &api.to_string(),
        "--api-token-file",
        &dir.join("api-token").display().to_string(),
    ]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let host = lab.net.host.name.clone();
    let request = move |method: &'static str, path: &'static str, body: String| {
        vespa_tests::net::in_netns(&host, move || {
            vespa_tests::daemons::http_request(api, method, path, Some(token), &body)
        })
    };
    let missing = || -> Option<f64> {
        let (status, body) = request("GET", "/metrics", String::new())?;
        (status == 200).then_some(())?;
        body.lines().find_map(|l| {
            let v = l.strip_prefix(
                "vespa_decisions_drift_total{node=\"VO\",actuator=\"fw\",kind=\"missing\"} ",
            )?;
            v.parse().ok()
        })
    };
    wait_until("a first reconciliation of the firewall agent", WAIT, || {
        (missing()? == 0.0).then_some(())
    });

    let target = "198.51.100.7";
    let (status, body) = request(
        "POST",
        "/api/v1/decisions",
        format!(r#"{{"target": "{target}", "ttl_s": 600}}"#),
    )
    .expect("the API answers");
    assert_eq!(status, 200, "{body}");
    wait_until("the VO's block in the kernel", WAIT, || {
        lab.block_of(target)
    });

    // Behind the VO's back: the agent told directly to drop the entry.
    lab.call("fw", "release_hackers", &[target])
        .expect("release_hackers on the agent");
    assert!(lab.block_of(target).is_none(), "removed from the kernel");
    let back = wait_until("the block back in the kernel", WAIT, || {
        lab.block_of(target)
    });
    assert_eq!(back["reflex"], false, "{back}");
    wait_until("the missing block counted", WAIT, || {
        (missing()? >= 1.0).then_some(())
    });
}

/// Reconciliation of throttles against the kernel: the policy's throttle, removed behind the
/// VO's back with the agent's own `unthrottle`, is back at the next pass at the policy's rate
/// for the time left, counted missing once; a throttle the operator asked of the agent
/// directly (no decision, nothing in the ledger) is left in place pass after pass.
#[test]
fn a_throttle_removed_behind_the_vos_back_is_reapplied() {
    if !vespa_tests::privileged("a_throttle_removed_behind_the_vos_back_is_reapplied") {
        return;
    }
    let mut lab = Lab::new(
        "fw-reconcile-thr",
        "",
        vec![N::new("conn", "agent_connections", Some("VO"), 4162)],
    );
    let policy = format!(
        "{}\n[reconcile]\nevery_s = 1\n",
        syn_policy(
            "above = 40\nbelow = 5\ncalm_s = 3600\ncooldown_s = 1\nverify_s = 0\n\
             ladder = [{ action = \"throttle\", rate = \"1000pps\", ttl_s = 600 }]"
        )
    );
    let dir = lab.tree.scratch.dir.clone();
    std::fs::write(dir.join("policy.toml"), policy).expect("policy file");
    let api: SocketAddr = "127.0.0.1:8191".parse().expect("addr");
    lab.start_vo(&[
        "--policy",
        &dir.join("policy.toml").display().to_string(),
        "--http",
        &api.to_string(),
    ]);
    let _agent = lab.start_agent("agent", &["--syn-threshold", "40"], &["fw", "bw", "conn"]);
    let host = lab.net.host.name.clone();
    let metric = move |name: &str| -> Option<f64> {
        let name = name.to_string();
        let host = host.clone();
        let (status, body) = vespa_tests::net::in_netns(&host, move || {
            vespa_tests::daemons::http_request(api, "GET", "/metrics", None, "")
        })?;
        (status == 200).then_some(())?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
    };
    let missing =
        || metric("vespa_decisions_drift_total{node=\"VO\",actuator=\"fw\",kind=\"missing\"}");
    let passes = || metric("vespa_reconcile_pass_seconds_count{node=\"VO\",actuator=\"fw\"}");
    wait_until("a first reconciliation of the firewall agent", WAIT, || {
        (missing()? == 0.0).then_some(())
    });
    let throttle_of = |target: &str| {
        lab.json("fw", "throttles", &[]).as_array().and_then(|a| {
            a.iter()
                .find(|t| t["target"].as_str() == Some(target))
                .cloned()
        })
    };

    // The operator's own throttle, asked of the agent directly.
    let by_hand = "203.0.113.9";
    lab.json("fw", "throttle", &[by_hand, "500pps", "600"]);

    let (a, v) = (lab.attacker(), lab.victim());
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let _listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    let from: std::net::IpAddr = a.end.v4.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from, victim, 400));
    let attacker = a.end.v4.to_string();
    let placed = wait_until("the policy's throttle in the kernel", WAIT, || {
        throttle_of(&attacker)
    });
    assert_eq!(placed["rate"], "1000pps", "{placed}");

    // Behind the VO's back: the agent told directly to drop it.
    lab.call("fw", "unthrottle", &[&attacker])
        .expect("unthrottle on the agent");
    assert!(throttle_of(&attacker).is_none(), "removed from the kernel");
    let back = wait_until("the throttle back in the kernel", WAIT, || {
        throttle_of(&attacker)
    });
    assert_eq!(back["rate"], "1000pps", "the policy's rate: {back}");
    let left = back["expires_in_ms"].as_u64().expect("a TTL");
    assert!(
        left <= placed["expires_in_ms"].as_u64().expect("a TTL"),
        "re-applied for the time left, not a new TTL: {back} after {placed}"
    );
    wait_until("the missing throttle counted", WAIT, || {
        (missing()? >= 1.0).then_some(())
    });
    // Two more passes: nothing else missing, and the operator's throttle still there.
    let seen = passes().expect("passes counted");
    wait_until("two more passes", WAIT, || {
        (passes()? >= seen + 2.0).then_some(())
    });
    assert_eq!(missing(), Some(1.0), "counted once");
    assert_eq!(
        metric("vespa_decisions_drift_total{node=\"VO\",actuator=\"fw\",kind=\"stray\"}"),
        Some(0.0),
        "the operator's throttle is not a stray"
    );
    let kept = throttle_of(by_hand).expect("the operator's throttle stays");
    assert_eq!(kept["rate"], "500pps", "{kept}");
}
