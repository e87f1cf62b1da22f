//! The verbs of the antivirus agent (`agent_av`).

crate::verbs! {
    /// The verbs of the antivirus agent (the 2014 `Agent_AV`, over clamd).
    pub enum AvVerb {
        /// clamd health: PING -> PONG
        Ping "ping" {},
        /// clamd's version
        Version "version" {},
        /// scan a file, or every file under a directory, now (JSON results)
        Scan "scan" [Node] { path: String },
        /// the files analysed so far with their status, oldest first (JSON)
        DumpAnalyzedFileList "dump_analyzed_file_list" {},
        /// the VM is isolated: reach it through that hypervisor agent
        IsolateWarning "isolate_warning" [Command] { hypervisor_agent: String },
        /// the VM is connected again: reach it directly
        ConnectWarning "connect_warning" [Command] {},
        /// ask the VM to clean itself (while isolated: the 2014 sysrq keys via the hypervisor
        /// agent)
        CleanImage "clean_image" [Command] {},
        /// VM, clamd address, route, watched directory, counters (JSON)
        Status "status" {},
    }
}
