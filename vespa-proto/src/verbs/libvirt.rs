//! The verbs of the hypervisor agent (`agent_libvirt`).

use super::words::{Arg, MacAddr, Words};
use super::VerbError;

crate::verbs! {
    /// The verbs of the libvirt agent (the 2014 `Agent_Libvirt`, plus suspend, resume, the
    /// VM list, interface counters and the tap map).
    pub enum LibvirtVerb {
        /// whether the hypervisor has this VM (true/false)
        ContainsVm "contains_vm" { vm: String },
        /// set the VM's interface (or all of them) link down, confirmed from libvirt
        CutLink "cut_link" [Command] { vm: String, mac: Option<MacAddr> },
        /// set the VM's interface (or all of them) link up, confirmed from libvirt
        ConnectLink "connect_link" [Command] { vm: String, mac: Option<MacAddr> },
        /// the link state of each interface of the VM (JSON)
        LinkState "link_state" { vm: String },
        /// live-migrate the VM to the quarantine hypervisor (qemu+ssh://user@host/system
        /// unless a URI is given)
        Migrate "migrate" [Command] { vm: String, quarantine_host: String, user: Option<String> },
        /// reboot the VM (start it if it is off)
        Restart "restart" [Command] { vm: String },
        /// destroy then start the VM
        RestartHard "restart_hard" [Command] { vm: String },
        /// send key codes (default: the 2014 win32 0x12 0x42)
        SendKey "send_key" [Node] { vm: String, keys: Keys },
        /// pause the VM's vCPUs
        Suspend "suspend" [Command] { vm: String },
        /// resume a paused VM
        Resume "resume" [Command] { vm: String },
        /// running, paused, shutoff, ...
        VmState "vm_state" { vm: String },
        /// every VM with its state and interfaces (JSON)
        ListVms "list_vms" {},
        /// per-interface counters of the VM (JSON)
        IfaceStats "iface_stats" { vm: String, iface: Option<String> },
        /// host tap device -> VM name, UUID, MAC (JSON)
        TapMap "tap_map" {},
    }
}

/// A key code set of `virDomainSendKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codeset {
    /// Linux input key codes.
    Linux,
    /// XT.
    Xt,
    /// AT set 1.
    Atset1,
    /// AT set 2.
    Atset2,
    /// AT set 3.
    Atset3,
    /// macOS.
    Osx,
    /// XT (keyboard driver).
    XtKbd,
    /// USB HID.
    Usb,
    /// Windows virtual keys (the 2014 default).
    Win32,
    /// QEMU's numbering.
    Qnum,
}

const CODESETS: [(&str, Codeset); 10] = [
    ("linux", Codeset::Linux),
    ("xt", Codeset::Xt),
    ("atset1", Codeset::Atset1),
    ("atset2", Codeset::Atset2),
    ("atset3", Codeset::Atset3),
    ("osx", Codeset::Osx),
    ("xt_kbd", Codeset::XtKbd),
    ("usb", Codeset::Usb),
    ("win32", Codeset::Win32),
    ("qnum", Codeset::Qnum),
];

impl Codeset {
    /// Its name in a call.
    pub fn name(self) -> &'static str {
        CODESETS
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("win32", |(n, _)| n)
    }
}

/// Most key codes one `send_key` sends (libvirt's limit).
pub const MAX_KEYCODES: usize = 16;

/// The keys of `send_key`: `[codeset] <keycode>...`, codes in decimal or 0x-hex, codeset one
/// of linux, xt, atset1/2/3, osx, xt_kbd, usb, win32, qnum (default win32). No words at all
/// means the 2014 keys (`keycodes` empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    /// The code set, when given.
    pub codeset: Option<Codeset>,
    /// The key codes; empty for the 2014 default.
    pub keycodes: Vec<u32>,
}

impl Arg for Keys {
    fn usage(_field: &str) -> String {
        "[codeset] [keycode...]".into()
    }

    fn take(words: &mut Words<'_>, field: &'static str) -> Result<Self, VerbError> {
        let all = words.rest();
        let Some(first) = all.first() else {
            return Ok(Keys::default());
        };
        let codeset = CODESETS.iter().find(|(n, _)| n == first).map(|(_, c)| *c);
        let codes = if codeset.is_some() {
            &all[1..]
        } else {
            &all[..]
        };
        let keycodes = codes
            .iter()
            .map(|k| {
                let k = k.trim();
                let r = match k.strip_prefix("0x") {
                    Some(h) => u32::from_str_radix(h, 16),
                    None => k.parse(),
                };
                r.map_err(|_| words.invalid(field, format!("bad key code {k:?}")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if keycodes.is_empty() || keycodes.len() > MAX_KEYCODES {
            let why = format!("send_key takes 1 to {MAX_KEYCODES} key codes");
            return Err(words.invalid(field, why));
        }
        Ok(Keys { codeset, keycodes })
    }

    fn put(&self, out: &mut Vec<String>) {
        if let Some(c) = self.codeset {
            out.push(c.name().into());
        }
        out.extend(self.keycodes.iter().map(u32::to_string));
    }
}
