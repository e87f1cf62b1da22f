//! `vespa-orchestrator decisions` and `vespa-orchestrator allowlist`: the operator's blocks
//! and protected sources by hand, through the VO's HTTP API (`--api URL --token-file FILE`)
//! or through the tree with a key (`-c topology --key-dir DIR --operator NAME`, as `call`).
//! Both ways end in the same [`Decisions`](super::Decisions) at the VO and print the same.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hyper::Method;
use serde::de::DeserializeOwned;
use vespa_node::launch::TopologyArgs;
use vespa_proto::verbs::{BlockEntry, Target, Verb, VoVerb, Word};

use super::format::{self, Format, JsonEntry};
use super::{
    check_note, Added, History, HistoryPage, Listing, StoryPage, DEFAULT_TTL_S, MAX_TTL_S,
};
use crate::client::{self, path_escape, Api, Connected};
use crate::control::{AllowEntry, PolicyError};
use crate::http::ApiToken;
use crate::ledger::{Decision, Story, MAX_LISTED};

/// Largest block list sent through the tree in one call (its words), under the tree's frame
/// size with room for the reply; the HTTP API takes up to 1 MiB.
pub const MAX_TREE_IMPORT_BYTES: usize = 512 << 10;

/// How the commands reach the VO, for their help.
pub const TRANSPORT_HELP: &str = "\
How the VO is reached:
  --api URL --token-file FILE     through its HTTP API (reads need no token)
  -c FILE [--key-dir DIR --operator NAME]
                                  through the tree, as `vespa-orchestrator call`: with an
                                  operator's key (per-node keys), else the VO's own or the
                                  shared key";

/// How to reach the VO: its HTTP API, or the tree.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Reaching the VO")]
pub struct Via {
    /// The VO's HTTP API, e.g. http://127.0.0.1:8080; without it, the tree is used.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// With --api: the file holding the API's bearer token (mode 0600), as given to
    /// `run --api-token-file`. Mutations need it.
    #[arg(long, value_name = "FILE", env = "VESPA_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Through the tree: the topology and keys (`-c`, `--key`, `--key-dir`).
    #[command(flatten)]
    pub tree: TopologyArgs,
    /// Through the tree with per-node keys: act as this operator, with its key
    /// (`keygen --per-node DIR --operator NAME`). Without it, the VO's own key is used.
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// Seconds to wait for the VO's answer.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

/// `--json` / `--text`.
#[derive(Args, Debug, Clone, Copy)]
pub struct Shape {
    /// Print JSON (the API's answer as it is).
    #[arg(long, conflicts_with = "text")]
    pub json: bool,
    /// Print the targets only, one per line (an importable list).
    #[arg(long)]
    pub text: bool,
}

/// The decisions in force, by hand. (The flattened fields are documented by their own
/// arguments.)
#[allow(missing_docs)]
#[derive(Subcommand, Debug)]
pub enum DecisionsCommand {
    /// List the decisions in force: blocks, cut links, quarantines, wherever their rule runs.
    ///
    /// A table by default: KEY (what `delete` takes), ACTION, TARGET, ACTUATOR, AT (the node
    /// whose policy holds it: VO, or the HO of a fast-path rule), EXPIRES, DECISION (its id
    /// in the ledger) and VERIFIED (the policy's verification by counters: passed, failed,
    /// not_verifiable; `-` until it has said). HOs of other
    /// processes that did not answer are named on stderr: the list lacks what they hold.
    #[command(after_help = "Examples:
  vespa-orchestrator decisions list --api http://127.0.0.1:8080
  vespa-orchestrator decisions list --json \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    List {
        #[command(flatten)]
        shape: Shape,
        /// History from the decision ledger: ended decisions too, with why they ended
        /// (needs a VO with a ledger; through the API or the tree).
        #[arg(long)]
        all: bool,
        /// History since a time: Unix seconds, or a duration back from now (90s, 15m, 2h,
        /// 7d); implies --all for what ended since.
        #[arg(long, value_name = "TIME|DURATION")]
        since: Option<String>,
        #[command(flatten)]
        via: Via,
    },
    /// The whole story of one decision of the ledger: who decided and why (rule and the
    /// policy file's hash, the kernel reflex, or an operator's token id or key), the alert
    /// that caused it, the actuator's reply, and when and why it ended.
    #[command(after_help = "Examples:
  vespa-orchestrator decisions show 42 --api http://127.0.0.1:8080
  vespa-orchestrator decisions show 42 --json \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Show {
        /// The decision's id (`list --all`, or the DECISION column of `list`).
        id: i64,
        /// Print JSON (the API's answer as it is).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        via: Via,
    },
    /// Block addresses, prefixes or MAC addresses by hand, all or nothing.
    ///
    /// Each TARGET is an IPv4/IPv6 address, a prefix (10.0.0.0/24; host bits are cleared) or
    /// a MAC address. The blocks go through the VO's policy like its own (the actuator named
    /// by its rules' `sdn`) and last --ttl seconds unless deleted. Every target is checked
    /// before any is placed: one that is malformed or protected by the allowlist refuses them
    /// all. Prints each block's key.
    #[command(after_help = "Examples:
  vespa-orchestrator decisions add 203.0.113.7 \\
      --api http://127.0.0.1:8080 --token-file /etc/vespa/api-token
  vespa-orchestrator decisions add 198.51.100.0/24 52:54:00:ab:cd:01 \\
      --ttl 3600 --reason \"ssh scan\" \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Add {
        /// Addresses, prefixes or MAC addresses to block.
        #[arg(required = true, value_name = "TARGET", value_parser = parse_target)]
        targets: Vec<Target>,
        /// How long the blocks last, in seconds (1 to 86400).
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TTL_S, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_S))]
        ttl: u64,
        /// Why (written to the VO's log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        via: Via,
    },
    /// Delete decisions: undo them wherever they are enforced.
    ///
    /// Each argument is a key from `list` or a target: every decision on that target is
    /// undone, whoever holds it (the VO's rules, an HO's fast-path rule, a block by hand),
    /// and the actuator is told to release it. Exits 1 if any could not be deleted.
    #[command(after_help = "Examples:
  vespa-orchestrator decisions delete 203.0.113.7 \\
      --api http://127.0.0.1:8080 --token-file /etc/vespa/api-token
  vespa-orchestrator decisions delete 198.51.100.0/24 web-vm \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Delete {
        /// Keys (from `list`) or targets.
        #[arg(required = true, value_name = "KEY|TARGET")]
        keys: Vec<String>,
        #[command(flatten)]
        via: Via,
    },
    /// Block every target of a block list (text or JSON), all or nothing.
    ///
    /// Text: one address, prefix or MAC address per line; `#` starts a comment, and a
    /// comment after a target is its reason. JSON: a list of {\"target\", \"ttl_s\"?,
    /// \"reason\"?} or of bare targets (what `export --json` writes). Which one is detected from
    /// the first character. The whole file is checked before anything is sent: bad lines are
    /// listed by number and nothing is applied. At most 1 MiB and 100,000 entries (through
    /// the tree, 512 KiB).
    #[command(after_help = "Examples:
  vespa-orchestrator decisions import blocklist.txt --ttl 3600 \\
      --api http://127.0.0.1:8080 --token-file /etc/vespa/api-token
  curl -s https://feeds.example/drop.txt | vespa-orchestrator decisions \\
      import - -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Import {
        /// The block list, or `-` for standard input.
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
        /// TTL of the entries that have none, in seconds (default: 600).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_S))]
        ttl: Option<u64>,
        #[command(flatten)]
        via: Via,
    },
    /// Write the blocks in force as a block list that `import` reads back.
    ///
    /// Text (default): one target per line under a comment. JSON: [{\"target\", \"ttl_s\"}],
    /// each with the time its block has left, so an import restores the same expiries.
    #[command(after_help = "Examples:
  vespa-orchestrator decisions export -o blocked.txt --api http://127.0.0.1:8080
  vespa-orchestrator decisions export --json -o blocked.json \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Export {
        #[command(flatten)]
        shape: Shape,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        via: Via,
    },
}

/// The sources the policy never blocks, by hand.
#[allow(missing_docs)]
#[derive(Subcommand, Debug)]
pub enum AllowlistCommand {
    /// List the protected sources: configured, automatic (the tree's machines, controllers,
    /// gateways) and added by hand, with where each comes from.
    #[command(after_help = "Examples:
  vespa-orchestrator allowlist list --api http://127.0.0.1:8080
  vespa-orchestrator allowlist list --json \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    List {
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        via: Via,
    },
    /// Protect addresses, prefixes or MAC addresses: never blocked, whoever asks.
    #[command(after_help = "Examples:
  vespa-orchestrator allowlist add 192.0.2.1 --note \"office gateway\" \\
      --api http://127.0.0.1:8080 --token-file /etc/vespa/api-token
  vespa-orchestrator allowlist add 10.20.0.0/16 \\
      -c topology.toml --key-dir /etc/vespa/keys --operator alice")]
    Add {
        /// Addresses, prefixes or MAC addresses to protect.
        #[arg(required = true, value_name = "TARGET", value_parser = parse_target)]
        targets: Vec<Target>,
        /// Why (shown by `list`).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[command(flatten)]
        via: Via,
    },
    /// Remove protections added by hand (configured and automatic ones stay).
    #[command(after_help = "Examples:
  vespa-orchestrator allowlist delete 192.0.2.1 \\
      --api http://127.0.0.1:8080 --token-file /etc/vespa/api-token")]
    Delete {
        /// The protected targets to remove.
        #[arg(required = true, value_name = "TARGET", value_parser = parse_target)]
        targets: Vec<Target>,
        #[command(flatten)]
        via: Via,
    },
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse_word(s)
}

/// The VO, reached one way or the other.
enum Remote {
    Api(Api),
    Tree(Box<Connected>),
}

impl Remote {
    async fn open(via: &Via) -> anyhow::Result<Remote> {
        let timeout = Duration::from_secs(via.timeout.max(1));
        match &via.api {
            Some(url) => {
                if via.operator.is_some() {
                    anyhow::bail!("--operator is for the tree; with --api the token is the credential (--token-file)");
                }
                let token = via.token_file.as_deref().map(ApiToken::load).transpose()?;
                Ok(Remote::Api(Api::new(url, token, timeout)?))
            }
            None => Ok(Remote::Tree(Box::new(
                client::connect(&via.tree, None, via.operator.as_deref(), timeout).await?,
            ))),
        }
    }

    /// A read verb through the tree: its JSON as it is.
    async fn tree_read<T: DeserializeOwned>(c: &mut Connected, verb: VoVerb) -> anyhow::Result<T> {
        let text = Self::tree_call(c, verb).await?;
        serde_json::from_str(&text).with_context(|| format!("{} answered something else", c.node))
    }

    /// A mutation through the tree: a JSON `Result` whose error keeps its kind.
    async fn tree_do<T: DeserializeOwned>(c: &mut Connected, verb: VoVerb) -> anyhow::Result<T> {
        let text = Self::tree_call(c, verb).await?;
        let r: Result<T, PolicyError> = serde_json::from_str(&text)
            .with_context(|| format!("{} answered something else", c.node))?;
        Ok(r?)
    }

    async fn tree_call(c: &mut Connected, verb: VoVerb) -> anyhow::Result<String> {
        let words = verb.args();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        c.client
            .call(verb.name(), &words)
            .await?
            .map_err(|e| anyhow::anyhow!("{}: {e}", c.node))
    }

    async fn http_json<T: DeserializeOwned>(
        api: &Api,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<T> {
        let bytes = api.send(method, path, body).await?;
        serde_json::from_slice(&bytes).context("the API answered something else than JSON")
    }

    async fn list(&mut self) -> anyhow::Result<Listing> {
        match self {
            Remote::Api(api) => Self::http_json(api, Method::GET, "/api/v1/decisions", None).await,
            Remote::Tree(c) => Self::tree_read(c, VoVerb::PolicyDecisions {}).await,
        }
    }

    /// The ledger's history through the tree, page after page (the newest
    /// [`crate::ledger::MAX_LISTED`], as the API answers), oldest first.
    async fn history(&mut self, since: u64) -> anyhow::Result<History> {
        let Remote::Tree(c) = self else {
            anyhow::bail!("the history through the API is read whole");
        };
        let mut pages: Vec<Vec<Decision>> = Vec::new();
        let (mut before, mut count) = (None, 0usize);
        loop {
            let verb = VoVerb::PolicyHistory {
                since,
                before: before.map(|b: i64| b.max(0) as u64),
            };
            let page: HistoryPage = Self::tree_ledger(c, verb).await?;
            count += page.decisions.len();
            pages.push(page.decisions);
            match page.next {
                Some(next) if count < MAX_LISTED as usize && Some(next) != before => {
                    before = Some(next)
                }
                _ => break,
            }
        }
        let mut decisions: Vec<Decision> = pages.into_iter().rev().flatten().collect();
        let extra = decisions.len().saturating_sub(MAX_LISTED as usize);
        decisions.drain(..extra);
        Ok(History { decisions })
    }

    /// Decision `id` and its whole story through the tree, page after page.
    async fn show(&mut self, id: i64) -> anyhow::Result<Story> {
        let Remote::Tree(c) = self else {
            anyhow::bail!("a story through the API is read whole");
        };
        let id = u64::try_from(id).map_err(|_| anyhow::anyhow!("{id} is not a decision id"))?;
        let mut from = 0;
        let mut story: Option<Story> = None;
        loop {
            let page: StoryPage = Self::tree_ledger(
                c,
                VoVerb::PolicyShow {
                    id,
                    from: Some(from),
                },
            )
            .await?;
            match &mut story {
                None => story = Some(page.story),
                Some(s) => s.events.extend(page.story.events),
            }
            match page.next {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        story.ok_or_else(|| anyhow::anyhow!("no answer"))
    }

    /// A read of the ledger through the tree; a VO older than these verbs is named as such.
    async fn tree_ledger<T: DeserializeOwned>(
        c: &mut Connected,
        verb: VoVerb,
    ) -> anyhow::Result<T> {
        let name = verb.name();
        match Self::tree_do(c, verb).await {
            Err(e) if e.to_string().contains("has no verb") => Err(anyhow::anyhow!(
                "{}: {e}\n(this VO does not serve `{name}`: it is older than this command; read the ledger with --api URL)",
                c.node
            )),
            r => r,
        }
    }

    async fn add(&mut self, entries: Vec<BlockEntry>) -> anyhow::Result<Added> {
        match self {
            Remote::Api(api) => {
                let json: Vec<JsonEntry> = entries
                    .iter()
                    .map(|e| JsonEntry {
                        target: e.target.to_string(),
                        ttl_s: e.ttl_s,
                        reason: e.reason.clone(),
                    })
                    .collect();
                let body = serde_json::to_vec(&json)?;
                let path = "/api/v1/decisions";
                Self::http_json(api, Method::POST, path, Some(("application/json", body))).await
            }
            Remote::Tree(c) => {
                let size: usize = entries.iter().map(|e| e.to_word().len() + 8).sum();
                if size > MAX_TREE_IMPORT_BYTES {
                    anyhow::bail!(
                        "{size} bytes of entries: at most {MAX_TREE_IMPORT_BYTES} through the tree in one call; use the HTTP API (--api) or split the list"
                    );
                }
                Self::tree_do(c, VoVerb::PolicyBlock { entries }).await
            }
        }
    }

    /// `entries` are `bytes` as parsed (in `format`) and checked by the caller.
    async fn import(
        &mut self,
        bytes: Vec<u8>,
        format: Format,
        entries: Vec<super::Placed>,
        ttl: Option<u64>,
    ) -> anyhow::Result<Added> {
        match self {
            Remote::Api(api) => {
                // The file as it is, so that the VO's refusals name its lines too.
                let content_type = match format {
                    Format::Text => "text/plain; charset=utf-8",
                    Format::Json => "application/json",
                };
                let path = match ttl {
                    Some(t) => format!("/api/v1/decisions?ttl_s={t}"),
                    None => "/api/v1/decisions".to_string(),
                };
                Self::http_json(api, Method::POST, &path, Some((content_type, bytes))).await
            }
            Remote::Tree(_) => {
                let entries = entries
                    .into_iter()
                    .map(|p| BlockEntry {
                        ttl_s: p.entry.ttl_s.or(ttl),
                        ..p.entry
                    })
                    .collect();
                self.add(entries).await
            }
        }
    }

    async fn delete(&mut self, key: &str) -> anyhow::Result<String> {
        match self {
            Remote::Api(api) => {
                let path = format!("/api/v1/decisions/{}", path_escape(key.trim()));
                let v: serde_json::Value =
                    Self::http_json(api, Method::DELETE, &path, None).await?;
                Ok(v["result"].as_str().unwrap_or_default().to_string())
            }
            Remote::Tree(c) => {
                let key = key.to_string();
                Self::tree_do(c, VoVerb::PolicyDelete { key }).await
            }
        }
    }

    async fn allowlist(&mut self) -> anyhow::Result<Vec<AllowEntry>> {
        match self {
            Remote::Api(api) => {
                let mut v: serde_json::Value =
                    Self::http_json(api, Method::GET, "/api/v1/allowlist", None).await?;
                serde_json::from_value(v["allowlist"].take())
                    .context("the API's allowlist is not a list of entries")
            }
            Remote::Tree(c) => Self::tree_read(c, VoVerb::PolicyAllowlist {}).await,
        }
    }

    async fn allow(&mut self, target: Target, note: Option<String>) -> anyhow::Result<String> {
        match self {
            Remote::Api(api) => {
                let body = serde_json::to_vec(
                    &serde_json::json!({ "target": target.to_string(), "note": note }),
                )?;
                let v: serde_json::Value = Self::http_json(
                    api,
                    Method::POST,
                    "/api/v1/allowlist",
                    Some(("application/json", body)),
                )
                .await?;
                Ok(v["allowed"].as_str().unwrap_or_default().to_string())
            }
            Remote::Tree(c) => Self::tree_do(c, VoVerb::PolicyAllow { target, note }).await,
        }
    }

    async fn disallow(&mut self, target: Target) -> anyhow::Result<String> {
        match self {
            Remote::Api(api) => {
                let path = format!("/api/v1/allowlist/{}", path_escape(&target.to_string()));
                let v: serde_json::Value =
                    Self::http_json(api, Method::DELETE, &path, None).await?;
                Ok(v["disallowed"].as_str().unwrap_or_default().to_string())
            }
            Remote::Tree(c) => Self::tree_do(c, VoVerb::PolicyDisallow { target }).await,
        }
    }

    async fn close(self) {
        if let Remote::Tree(c) = self {
            c.client.close().await;
        }
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints `rows` as columns, the first row a header.
fn table(out: &mut impl std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn expires(at: Option<u64>, now: u64) -> String {
    match at {
        None => "never".into(),
        Some(t) => format!("in {}s", t.saturating_sub(now)),
    }
}

fn print_listing(l: &Listing, shape: Shape) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if shape.json {
        serde_json::to_writer_pretty(&mut out, l)?;
        writeln!(out)?;
    } else if shape.text {
        out.write_all(format::to_text(l).as_bytes())?;
    } else if l.actions.is_empty() {
        writeln!(
            out,
            "no decision in force{}",
            if l.dry_run { " (dry-run mode)" } else { "" }
        )?;
    } else {
        let now = now_unix_s();
        let mut rows = vec![[
            "KEY", "ACTION", "TARGET", "ACTUATOR", "AT", "EXPIRES", "DECISION", "VERIFIED",
        ]
        .map(String::from)
        .to_vec()];
        for a in &l.actions {
            let action = if a.dry_run {
                format!("{} (dry run)", a.action)
            } else {
                a.action.clone()
            };
            rows.push(vec![
                a.key.clone(),
                action,
                a.target.clone(),
                a.actuator.clone(),
                a.at.clone().unwrap_or_else(|| "VO".into()),
                expires(a.expires_unix_s, now),
                a.decision.map_or_else(|| "-".into(), |d| d.to_string()),
                a.verification.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&mut out, &rows)?;
    }
    out.flush()?;
    for u in &l.unreachable {
        eprintln!("warning: not listed, did not answer: {u}");
    }
    Ok(())
}

fn print_added(a: &Added, what: &str) {
    for k in &a.added {
        println!("blocked {k}");
    }
    let dup = match a.duplicates {
        0 => String::new(),
        n => format!(" ({n} repeated target(s) counted once)"),
    };
    println!("{} block(s) placed{what}{dup}", a.added.len());
}

fn read_input(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let limit = super::MAX_IMPORT_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| file.display().to_string())?;
    }
    Ok(bytes)
}

/// Runs a `decisions` command.
pub async fn decisions(cmd: DecisionsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DecisionsCommand::List {
            shape,
            all,
            since,
            via,
        } if all || since.is_some() => {
            let Some(url) = &via.api else {
                let since = since
                    .as_deref()
                    .map(|s| super::history::parse_since(s, now_unix_s()))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let mut r = Remote::open(&via).await?;
                let h = r.history(since.unwrap_or(0)).await;
                r.close().await;
                let h = h?;
                let mut out = std::io::stdout().lock();
                if shape.json {
                    serde_json::to_writer(&mut out, &h)?;
                } else {
                    out.write_all(super::history::history_text(&h).as_bytes())?;
                }
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            };
            let api = Api::new(url, None, Duration::from_secs(via.timeout.max(1)))?;
            let mut query = vec![format!(
                "format={}",
                if shape.json { "json" } else { "text" }
            )];
            if all {
                query.push("all=true".into());
            }
            if let Some(s) = &since {
                // Checked here for a clear message; the VO parses it again.
                super::history::parse_since(s, now_unix_s()).map_err(anyhow::Error::msg)?;
                query.push(format!("since={}", path_escape(s)));
            }
            let path = format!("/api/v1/decisions?{}", query.join("&"));
            let bytes = api.send(Method::GET, &path, None).await?;
            std::io::stdout().write_all(&bytes)?;
        }
        DecisionsCommand::Show { id, json, via } => {
            let Some(url) = &via.api else {
                let mut r = Remote::open(&via).await?;
                let story = r.show(id).await;
                r.close().await;
                let story = story?;
                if json {
                    println!("{}", serde_json::to_string(&story)?);
                } else {
                    print!("{}", super::history::story_text(&story));
                }
                return Ok(ExitCode::SUCCESS);
            };
            let api = Api::new(url, None, Duration::from_secs(via.timeout.max(1)))?;
            let f = if json { "json" } else { "text" };
            let bytes = api
                .send(
                    Method::GET,
                    &format!("/api/v1/decisions/{id}?format={f}"),
                    None,
                )
                .await?;
            std::io::stdout().write_all(&bytes)?;
            if json {
                println!();
            }
        }
        DecisionsCommand::List { shape, via, .. } => {
            let mut r = Remote::open(&via).await?;
            let l = r.list().await?;
            r.close().await;
            print_listing(&l, shape)?;
        }
        DecisionsCommand::Add {
            targets,
            ttl,
            reason,
            via,
        } => {
            let reason = reason
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty());
            if let Some(Err(why)) = reason.as_deref().map(check_note) {
                anyhow::bail!("--reason {why}");
            }
            let entries = targets
                .into_iter()
                .map(|target| BlockEntry {
                    target,
                    ttl_s: Some(ttl),
                    reason: reason.clone(),
                })
                .collect();
            let mut r = Remote::open(&via).await?;
            let added = r.add(entries).await;
            r.close().await;
            print_added(&added?, &format!(" for {ttl}s"));
        }
        DecisionsCommand::Delete { keys, via } => {
            let mut r = Remote::open(&via).await?;
            let mut failed = 0;
            for k in &keys {
                match r.delete(k).await {
                    Ok(result) => println!("deleted {k}: {result}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("vespa-orchestrator: {k}: {e:#}");
                    }
                }
            }
            r.close().await;
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        DecisionsCommand::Import { file, ttl, via } => {
            let bytes = read_input(&file)?;
            let format = Format::detect(&bytes);
            let name = file.display().to_string();
            // Checked here first: bad lines are named before the VO is even asked.
            let entries = format::parse(&bytes, format)
                .map_err(|r| anyhow::anyhow!("{name}: nothing imported: {r}"))?;
            let mut r = Remote::open(&via).await?;
            let added = r.import(bytes, format, entries, ttl).await;
            r.close().await;
            let added = added.with_context(|| format!("{name}: nothing imported"))?;
            let dup = match added.duplicates {
                0 => String::new(),
                n => format!(" ({n} repeated target(s) counted once)"),
            };
            println!("imported {} block(s) from {name}{dup}", added.added.len());
        }
        DecisionsCommand::Export { shape, output, via } => {
            let mut r = Remote::open(&via).await?;
            let l = r.list().await?;
            r.close().await;
            let body = if shape.json {
                let mut s = serde_json::to_string_pretty(&format::to_json(&l, now_unix_s()))?;
                s.push('\n');
                s
            } else {
                format::to_text(&l)
            };
            match &output {
                Some(path) => {
                    std::fs::write(path, &body).with_context(|| path.display().to_string())?
                }
                None => std::io::stdout().lock().write_all(body.as_bytes())?,
            }
            for u in &l.unreachable {
                eprintln!("warning: not exported, did not answer: {u}");
            }
            if let Some(path) = output {
                eprintln!(
                    "{} block(s) written to {}",
                    l.blocked().len(),
                    path.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an `allowlist` command.
pub async fn allowlist(cmd: AllowlistCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AllowlistCommand::List { shape, via } => {
            let mut r = Remote::open(&via).await?;
            let list = r.allowlist().await;
            r.close().await;
            let list = list?;
            let mut out = std::io::stdout().lock();
            if shape.json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else if shape.text {
                for e in &list {
                    writeln!(out, "{}", e.target)?;
                }
            } else if list.is_empty() {
                writeln!(out, "the allowlist is empty")?;
            } else {
                let mut rows = vec![["TARGET", "ORIGIN", "NOTE"].map(String::from).to_vec()];
                rows.extend(list.iter().map(|e| {
                    vec![
                        e.target.clone(),
                        e.origin.clone(),
                        e.note.clone().unwrap_or_default(),
                    ]
                }));
                table(&mut out, &rows)?;
            }
        }
        AllowlistCommand::Add { targets, note, via } => {
            if let Some(Err(why)) = note.as_deref().map(check_note) {
                anyhow::bail!("--note {why}");
            }
            let mut r = Remote::open(&via).await?;
            let mut failed = 0;
            for t in targets {
                match r.allow(t, note.clone()).await {
                    Ok(done) => println!("protected {done}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("vespa-orchestrator: {t}: {e:#}");
                    }
                }
            }
            r.close().await;
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        AllowlistCommand::Delete { targets, via } => {
            let mut r = Remote::open(&via).await?;
            let mut failed = 0;
            for t in targets {
                match r.disallow(t).await {
                    Ok(done) => println!("no longer protected: {done}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("vespa-orchestrator: {t}: {e:#}");
                    }
                }
            }
            r.close().await;
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
