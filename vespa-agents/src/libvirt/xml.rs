//! The parts of a libvirt domain XML description the agent needs: its network interfaces
//! (MAC, host tap device, type, link state), and an interface element with its link state
//! changed — the device XML `virDomainUpdateDeviceFlags` takes to cut or restore a link
//! (what `virsh domif-setlink` sends).

use std::ops::Range;

use serde::Serialize;

/// One `<interface>` of `<devices>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Iface {
    /// `<mac address=...>`, lower case.
    pub mac: String,
    /// `<target dev=...>`: the host tap device (running domains only).
    pub tap: Option<String>,
    /// The `type` attribute (`ethernet`, `bridge`, `network`, ...).
    pub kind: String,
    /// `<model type=...>`.
    pub model: Option<String>,
    /// False when `<link state='down'/>`.
    pub link_up: bool,
    /// Byte range of the element in the description.
    #[serde(skip)]
    range: Range<usize>,
    /// Byte range of its `<link>` child, if any.
    #[serde(skip)]
    link: Option<Range<usize>>,
}

/// The domain's interfaces, in document order.
pub fn interfaces(xml: &str) -> Result<Vec<Iface>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for node in doc.descendants().filter(|n| {
        n.has_tag_name("interface") && n.parent().is_some_and(|p| p.has_tag_name("devices"))
    }) {
        let child = |tag: &str| node.children().find(|c| c.has_tag_name(tag));
        let Some(mac) = child("mac").and_then(|m| m.attribute("address")) else {
            continue;
        };
        let link = child("link");
        out.push(Iface {
            mac: mac.to_ascii_lowercase(),
            tap: child("target")
                .and_then(|t| t.attribute("dev"))
                .map(str::to_string),
            kind: node.attribute("type").unwrap_or("").to_string(),
            model: child("model")
                .and_then(|m| m.attribute("type"))
                .map(str::to_string),
            link_up: link.and_then(|l| l.attribute("state")) != Some("down"),
            range: node.range(),
            link: link.map(|l| l.range()),
        });
    }
    Ok(out)
}

/// The `<interface>` element of `iface` (taken from `xml`, the description it was parsed
/// from) with `<link state='up|down'/>`.
pub fn with_link_state(xml: &str, iface: &Iface, up: bool) -> String {
    let elem = &xml[iface.range.clone()];
    let link = format!("<link state='{}'/>", if up { "up" } else { "down" });
    match &iface.link {
        Some(r) => {
            let (s, e) = (r.start - iface.range.start, r.end - iface.range.start);
            format!("{}{}{}", &elem[..s], link, &elem[e..])
        }
        None => match elem.rfind("</interface>") {
            Some(close) => format!("{}{}\n{}", &elem[..close], link, &elem[close..]),
            // `<interface .../>` cannot happen for a device with a MAC; keep it well-formed.
            None => format!("{}>{}</interface>", elem.trim_end_matches("/>"), link),
        },
    }
}

/// Normalises a MAC address argument (`AA-BB-..` -> `aa:bb:..`), or None if malformed.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err())
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm' id='3'>
  <name>web1</name>
  <uuid>569e6ffc-b978-4541-9bd7-faf21eb6b814</uuid>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:AA:BB:01'/>
      <target dev='vnet1'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br0'/>
      <target dev='vnet2'/>
      <link state='down'/>
    </interface>
    <input type='mouse' bus='ps2'/>
  </devices>
</domain>"#;

    #[test]
    fn parses_interfaces() {
        let ifs = interfaces(XML).expect("parse");
        assert_eq!(ifs.len(), 2);
        assert_eq!(ifs[0].mac, "52:54:00:aa:bb:01");
        assert_eq!(ifs[0].tap.as_deref(), Some("vnet1"));
        assert_eq!(ifs[0].kind, "ethernet");
        assert_eq!(ifs[0].model.as_deref(), Some("virtio"));
        assert!(ifs[0].link_up);
        assert!(!ifs[1].link_up);
        assert!(interfaces("<domain").is_err());
    }

    #[test]
    fn link_state_is_inserted_or_replaced() {
        let ifs = interfaces(XML).expect("parse");
        let down = with_link_state(XML, &ifs[0], false);
        assert!(
            down.starts_with("<interface type='ethernet'>") && down.ends_with("</interface>"),
            "{down}"
        );
        assert!(
            down.contains("<link state='down'/>") && down.contains("<target dev='vnet1'/>"),
            "{down}"
        );
        let reparsed = interfaces(&format!("<domain><devices>{down}</devices></domain>"))
            .expect("well-formed");
        assert!(!reparsed[0].link_up);
        let up = with_link_state(XML, &ifs[1], true);
        assert!(
            up.contains("<link state='up'/>") && !up.contains("down"),
            "{up}"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("52-54-00-AA-bb-01").as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(normalize_mac("52:54:00:aa:bb"), None);
        assert_eq!(normalize_mac("52:54:00:aa:bb:zz"), None);
    }
}
