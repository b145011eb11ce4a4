//! `berth doctor`: checks that this machine can run berth with a given configuration, and
//! says what to do about each problem.
//!
//! The doctor reads the same configuration as `berth serve` and never changes anything on
//! the machine (the reflink probe writes two small files into each pool and removes them).
//! Each check ends in a [`Verdict`]: ok, warn (berth runs, with less: sizes not enforced,
//! slow snapshots) or fail (berth or its volumes will not work); any fail makes the
//! command exit non-zero.

mod checks;
mod nfs;
mod pools;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, PoolConfig};
use crate::mount::Syscall;

pub use checks::Host;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check: what was looked at, the verdict, what was found and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `config`, `machine`, `kubelet`, `socket` or `pool <name>`.
    pub subject: String,
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(subject: &str, check: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check { subject: subject.to_string(), check, verdict, detail: detail.into(), fix: None }
    }

    fn ok(subject: &str, check: &'static str, detail: impl Into<String>) -> Check {
        Check::new(subject, check, Verdict::Ok, detail)
    }

    fn warn(subject: &str, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { fix: Some(fix.into()), ..Check::new(subject, check, Verdict::Warn, detail) }
    }

    fn fail(subject: &str, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { fix: Some(fix.into()), ..Check::new(subject, check, Verdict::Fail, detail) }
    }
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON document for machines.
    Json,
}

/// `berth doctor`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Configuration file, as given to `berth serve`; without it, the embedded default.
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The socket `berth serve` will listen on.
    #[arg(long, env = "BERTH_ENDPOINT", default_value = "unix:///run/berth/csi.sock")]
    pub endpoint: String,
    /// The kubelet's root directory (its --root-dir).
    #[arg(long, env = "BERTH_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Every check's result, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when any check failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == verdict).count()
    }

    /// The report as aligned columns, each problem followed by what to do about it.
    #[must_use]
    pub fn table(&self) -> String {
        let subject_w = self.checks.iter().map(|c| c.subject.len()).max().unwrap_or(0).max("SUBJECT".len());
        let check_w = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0).max("CHECK".len());
        let mut out = String::new();
        let _ = writeln!(out, "{:subject_w$}  {:check_w$}  RESULT  DETAIL", "SUBJECT", "CHECK");
        for c in &self.checks {
            let _ =
                writeln!(out, "{:subject_w$}  {:check_w$}  {:6}  {}", c.subject, c.check, c.verdict.as_str(), c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "{:indent$}fix: {fix}", "", indent = subject_w + check_w + 12);
            }
        }
        let _ = writeln!(
            out,
            "\n{} ok, {} warn, {} fail",
            self.count(Verdict::Ok),
            self.count(Verdict::Warn),
            self.count(Verdict::Fail)
        );
        out
    }

    /// The report as one JSON document: `{"ok": bool, "summary": {...}, "checks": [...]}`.
    #[must_use]
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Summary {
            ok: usize,
            warn: usize,
            fail: usize,
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            ok: bool,
            summary: Summary,
            checks: &'a [Check],
        }
        let doc = Doc {
            ok: !self.failed(),
            summary: Summary {
                ok: self.count(Verdict::Ok),
                warn: self.count(Verdict::Warn),
                fail: self.count(Verdict::Fail),
            },
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Runs every check against this machine.
pub fn run(args: &DoctorArgs, sys: Arc<dyn Syscall>) -> Report {
    run_on(args, &Host::real(sys))
}

/// Runs every check against `host`.
#[must_use]
pub fn run_on(args: &DoctorArgs, host: &Host) -> Report {
    let mut report = Report { checks: Vec::new() };
    let origin = args.config.as_ref().map_or_else(|| "<embedded default>".to_string(), |p| p.display().to_string());
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => {
            report.checks.push(Check::ok("config", "load", format!("{origin}: {} pool(s)", config.pools.len())));
            Some(config)
        }
        Err(e) => {
            report.checks.push(Check::fail(
                "config",
                "load",
                e.to_string(),
                "fix the configuration file; README.md shows its format",
            ));
            None
        }
    };
    report.checks.extend(checks::machine(host, config.as_ref(), checks::Needs::of(config.as_ref())));
    if let Some(config) = &config {
        // How many records name each pool: a pool directory without its marker is only
        // made a pool when none do (see backend::identity).
        let mut recorded = std::collections::HashMap::<String, usize>::new();
        if let Ok((volumes, snapshots)) = crate::state::read_records(&config.state_dir) {
            for pool in volumes.iter().map(|v| &v.pool).chain(snapshots.iter().map(|s| &s.pool)) {
                *recorded.entry(pool.clone()).or_default() += 1;
            }
        }
        for pool in &config.pools {
            report.checks.extend(pool_checks(host, pool, recorded.get(pool.name()).copied().unwrap_or(0)));
        }
    }
    report.checks.extend(checks::kubelet(host, &args.kubelet_dir));
    report.checks.push(checks::socket(&args.endpoint));
    report
}

/// The checks of one pool, by type: a new pool type adds its arm here, and what it needs
/// of the machine in [`checks::Needs::of`].
fn pool_checks(host: &Host, pool: &PoolConfig, recorded: usize) -> Vec<Check> {
    match pool {
        PoolConfig::Hostpath(p) => pools::hostpath(host, p, recorded),
        PoolConfig::Block(p) => pools::block(host, p, recorded),
        PoolConfig::Device(p) => pools::device(host, p),
        PoolConfig::Nfs(p) => nfs::checks(host, p),
    }
}
