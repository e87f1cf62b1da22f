use std::net::IpAddr;
use std::time::Duration;

use super::*;

fn w(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// Every verb of a family, parsed from the words it writes, is itself again.
fn round_trip<V: Verb + PartialEq>(verbs: &[V]) {
    for v in verbs {
        let back = V::parse(v.name(), &v.args()).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert_eq!(&back, v, "{}", v.line());
    }
}

#[test]
fn usage_lines_come_from_the_fields() {
    let usage = |docs: Vec<VerbDoc>, name: &str| usage_of(&docs, name);
    assert_eq!(usage(NodeVerb::docs(), "call"), "<node> <verb> [args...]");
    assert_eq!(usage(NodeVerb::docs(), "get_alerts"), "[from_index]");
    assert_eq!(usage(NodeVerb::docs(), "help"), "");
    assert_eq!(
        usage(SdnVerb::docs(), "block_hackers"),
        "<mac|ip|prefix> [ttl_s|none]"
    );
    assert_eq!(
        usage(SdnVerb::docs(), "alert_ip"),
        "<ip> [mac] [ttl_s|none]"
    );
    assert_eq!(
        usage(SdnVerb::docs(), "release_hackers"),
        "[block_id|mac|ip]"
    );
    assert_eq!(
        usage(LibvirtVerb::docs(), "send_key"),
        "<vm> [codeset] [keycode...]"
    );
    assert_eq!(usage(LibvirtVerb::docs(), "cut_link"), "<vm> [mac]");
    assert_eq!(usage(HoVerb::docs(), "policy_dry_run"), "<on|off>");
    assert_eq!(usage(AvVerb::docs(), "scan"), "<path>");
    let help = AvVerb::docs()
        .into_iter()
        .find(|d| d.name == "clean_image")
        .expect("doc");
    assert_eq!(
        help.help,
        "ask the VM to clean itself (while isolated: the 2014 sysrq keys via the hypervisor agent)"
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let e = SdnVerb::parse("block_hackers", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "usage: block_hackers <mac|ip|prefix> [ttl_s|none]"
    );
    let e = SdnVerb::parse("block_hackers", &w(&["10.0.0.1", "300", "extra"])).unwrap_err();
    assert!(matches!(e, VerbError::Usage { .. }), "{e}");
    let e = SdnVerb::parse("block_hackers", &w(&["10.0.0.1", "-5"])).unwrap_err();
    assert!(e.to_string().contains("invalid time-to-live \"-5\""), "{e}");
    let e = SdnVerb::parse("reboot_the_world", &[]).unwrap_err();
    assert!(e.is_unknown());
    assert!(e
        .to_string()
        .starts_with("unknown verb \"reboot_the_world\" (verbs: alert_ip, "));
    let e = AvVerb::parse("scan", &[]).unwrap_err();
    assert_eq!(e.to_string(), "usage: scan <path>");
    let e = LibvirtVerb::parse("cut_link", &w(&["vm", "52:54:00:zz:00:01"])).unwrap_err();
    assert!(e.to_string().contains("malformed MAC"), "{e}");
    let e = LibvirtVerb::parse("send_key", &w(&["vm", "linux", "KEY_A"])).unwrap_err();
    assert!(e.to_string().contains("bad key code \"KEY_A\""), "{e}");
    let e = LibvirtVerb::parse("send_key", &w(&["vm", "linux"])).unwrap_err();
    assert!(e.to_string().contains("1 to 16 key codes"), "{e}");
    let e = SensorVerb::parse("mac_of", &w(&["nope"])).unwrap_err();
    assert_eq!(e.to_string(), "mac_of ip: \"nope\" is not an IP address");
    let e = HoVerb::parse("policy_dry_run", &w(&["maybe"])).unwrap_err();
    assert!(e.to_string().contains("neither on nor off"), "{e}");
}

#[test]
fn words_parse_into_typed_fields() {
    let ip: IpAddr = "10.0.0.7".parse().unwrap();
    let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
    assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
    assert_eq!(
        SdnVerb::parse("alert_ip", &w(&["10.0.0.7", "-", "none"])).unwrap(),
        SdnVerb::AlertIp {
            ip,
            mac: Some(OrDash(None)),
            ttl: Some(Ttl::Forever)
        }
    );
    assert_eq!(
        SdnVerb::parse("block_hackers", &w(&["52-54-00-ab-cd-01", "2.5"])).unwrap(),
        SdnVerb::BlockHackers {
            target: Target::Mac(mac),
            ttl: Some(Ttl::After(Duration::from_millis(2500)))
        }
    );
    assert_eq!(
        SdnVerb::parse("release_hackers", &w(&["#7"])).unwrap(),
        SdnVerb::ReleaseHackers {
            which: Some(BlockSelector::Id(7))
        }
    );
    assert_eq!(
        SdnVerb::parse("release_hackers", &w(&["10.0.0.7"])).unwrap(),
        SdnVerb::ReleaseHackers {
            which: Some(BlockSelector::Target(Target::Ip(ip)))
        }
    );
    assert_eq!(
        LibvirtVerb::parse("send_key", &w(&["vm"])).unwrap(),
        LibvirtVerb::SendKey {
            vm: "vm".into(),
            keys: Keys::default()
        }
    );
    assert_eq!(
        LibvirtVerb::parse("send_key", &w(&["vm", "0x12", "66"])).unwrap(),
        LibvirtVerb::SendKey {
            vm: "vm".into(),
            keys: Keys {
                codeset: None,
                keycodes: vec![18, 66]
            }
        }
    );
    assert_eq!(
        NodeVerb::parse("call", &w(&["a1", "recv_bytes", "eth0"])).unwrap(),
        NodeVerb::Call {
            node: "a1".into(),
            verb: "recv_bytes".into(),
            args: w(&["eth0"])
        }
    );
}

#[test]
fn every_family_round_trips_through_its_words() {
    let ip: IpAddr = "fd00::7".parse().unwrap();
    let mac = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);
    round_trip(&[
        NodeVerb::Help {},
        NodeVerb::FindNode { name: "a b".into() },
        NodeVerb::Call {
            node: "n".into(),
            verb: "v".into(),
            args: w(&["1", "2"]),
        },
        NodeVerb::GetAlerts {
            from_index: Some(12),
        },
        NodeVerb::GetAlerts { from_index: None },
    ]);
    round_trip(&[
        HoVerb::PolicyRelease {
            key: "10.0.0.1".into(),
        },
        HoVerb::PolicyDryRun {
            enabled: OnOff(true),
        },
    ]);
    round_trip(&[
        VoVerb::PolicyDecisions {},
        VoVerb::PolicyBlock { entries: vec![] },
        VoVerb::PolicyBlock {
            entries: vec![
                BlockEntry {
                    target: Target::Ip(ip),
                    ttl_s: None,
                    reason: None,
                },
                BlockEntry {
                    target: Target::Mac(mac),
                    ttl_s: Some(60),
                    reason: None,
                },
                BlockEntry {
                    target: Target::Net("10.1.0.0/16".parse().unwrap()),
                    ttl_s: None,
                    reason: Some("scan, then flood".into()),
                },
            ],
        },
        VoVerb::PolicyDelete {
            key: "web vm".into(),
        },
        VoVerb::PolicyAllow {
            target: Target::Ip(ip),
            note: Some("our gateway".into()),
        },
        VoVerb::PolicyDisallow {
            target: Target::Mac(mac),
        },
    ]);
    round_trip(&[
        SensorVerb::MacOf { ip },
        SensorVerb::RecvBytes { iface: None },
    ]);
    round_trip(&[
        SdnVerb::AlertIp {
            ip,
            mac: Some(OrDash(Some(Target::Mac(mac)))),
            ttl: None,
        },
        SdnVerb::BlockHackers {
            target: Target::Ip(ip),
            ttl: Some(Ttl::After(Duration::from_secs(300))),
        },
        SdnVerb::BlockHackers {
            target: Target::Mac(mac),
            ttl: Some(Ttl::Forever),
        },
        SdnVerb::ReleaseHackers { which: None },
    ]);
    round_trip(&[
        LibvirtVerb::CutLink {
            vm: "web".into(),
            mac: Some(mac),
        },
        LibvirtVerb::Migrate {
            vm: "web".into(),
            quarantine_host: "q".into(),
            user: None,
        },
        LibvirtVerb::SendKey {
            vm: "web".into(),
            keys: Keys {
                codeset: Some(Codeset::Linux),
                keycodes: vec![30, 31],
            },
        },
    ]);
    round_trip(&[
        AvVerb::IsolateWarning {
            hypervisor_agent: "hy".into(),
        },
        AvVerb::Status {},
    ]);
    assert_eq!(
        SdnVerb::BlockHackers {
            target: Target::Ip(ip),
            ttl: Some(Ttl::After(Duration::from_secs(300)))
        }
        .to_string(),
        "block_hackers fd00::7 300"
    );
}

#[test]
fn a_verb_name_belongs_to_one_family() {
    let families: [(&str, Vec<VerbDoc>); 7] = [
        ("node", NodeVerb::docs()),
        ("ho", HoVerb::docs()),
        ("vo", VoVerb::docs()),
        ("sensor", SensorVerb::docs()),
        ("libvirt", LibvirtVerb::docs()),
        ("sdn", SdnVerb::docs()),
        ("av", AvVerb::docs()),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for (family, docs) in &families {
        for d in docs {
            // Agents answer the node's verbs too: an agent verb must never shadow one.
            if let Some(other) = seen.insert(d.name, *family) {
                panic!("{} is a verb of both {other} and {family}", d.name);
            }
        }
    }
    let text = listing(&SensorVerb::docs());
    assert!(text.contains("  mac_of <ip>"), "{text}");
}

#[test]
fn a_block_entry_is_a_target_with_an_optional_ttl_and_reason() {
    let entry = |word: &str| BlockEntry::parse_word(word);
    assert_eq!(
        entry("10.0.0.5/24,600,port scan, then flood"),
        Ok(BlockEntry {
            target: Target::Net("10.0.0.0/24".parse().unwrap()),
            ttl_s: Some(600),
            reason: Some("port scan, then flood".into()),
        })
    );
    assert_eq!(
        entry("aa:bb:cc:dd:ee:ff,,why").map(|e| (e.ttl_s, e.to_word())),
        Ok((None, "aa:bb:cc:dd:ee:ff,,why".into()))
    );
    assert_eq!(
        entry("10.0.0.9,").map(|e| e.to_word()),
        Ok("10.0.0.9".into())
    );
    assert!(entry("10.0.0.9,ten")
        .unwrap_err()
        .contains("\"ten\" is not a time-to-live"));
    assert!(entry("10.0.0.300")
        .unwrap_err()
        .contains("invalid block target"));
    assert_eq!(
        usage_of(&VoVerb::docs(), "policy_block"),
        "[target[,ttl_s[,reason]]...]"
    );
    let e = VoVerb::parse("policy_block", &w(&["10.0.0.1", "nope"])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("policy_block entries: invalid block target"),
        "{e}"
    );
    assert_eq!(permission_of("policy_block"), Permission::Command);
    assert_eq!(permission_of("policy_decisions"), Permission::Read);
}

#[test]
fn a_target_travels_as_its_text() {
    use serde::de::{value::StrDeserializer, Deserialize as _};
    let text = |s: &str| Target::deserialize(StrDeserializer::<serde::de::value::Error>::new(s));
    assert_eq!(
        text("10.0.0.0/24"),
        Ok(Target::Net("10.0.0.0/24".parse().unwrap()))
    );
    assert_eq!(
        text("52:54:00:00:00:07").map(|t| t.to_string()),
        Ok("52:54:00:00:00:07".into())
    );
    let e = text("<script>").unwrap_err().to_string();
    assert!(e.contains("invalid block target"), "{e}");
    // A status row round-trips, its target written as text.
    let row = BlockInfo {
        target: Target::parse_word("2001:db8::/64").unwrap(),
        expires_in_ms: Some(1500),
        reflex: true,
        packets: 7,
        bytes: 700,
        first_drop_after_ns: None,
        created_ns: 42,
    };
    let bytes = postcard::to_stdvec(&row).unwrap();
    assert!(bytes.windows(13).any(|w| w == b"2001:db8::/64"));
    assert_eq!(postcard::from_bytes::<BlockInfo>(&bytes).unwrap(), row);
}
