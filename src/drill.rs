//! `berth drill`: the restore drill of a shared pool's snapshot copies (issue 22). A backup
//! is theory until a restore works, so the drill restores copies from the pool's store
//! into a scratch directory, checking the manifest and every chunk on the way and every
//! restored byte after ([`crate::archive::restore::verify`]), prints a PASS or FAIL line
//! per copy and a summary, and can leave the result for Prometheus' node-exporter
//! (textfile collector).
//!
//! It reaches the store through berth's userspace NFS client, as the NFS controller does:
//! no kernel mount. The scratch restore gives every file the owner, mode, times and
//! extended attributes its manifest records, which takes root (CAP_CHOWN, CAP_FOWNER,
//! CAP_DAC_OVERRIDE, CAP_MKNOD for device nodes); docs/deployment.md ("Restore drill")
//! shows the CronJob the chart renders for it.

use std::collections::HashSet;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::archive::restore::{self, Drill};
use crate::archive::store::{Area, ChunkStore};
use crate::archive::{check_name, snapshot_manifest};
use crate::backend::Shared;
use crate::backend::nfs::NfsPool;
use crate::config::{Config, PoolConfig};
use crate::ids;
use crate::metrics::exposition::{Kind, Writer};

/// `berth drill`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("copies").required(true).args(["snapshots", "all", "latest"])))]
pub struct DrillArgs {
    /// Configuration file, as given to `berth serve`; without it, the embedded default.
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The NFS pool of the configuration whose store of snapshot copies
    /// (.berth/archive on its export) is drilled.
    #[arg(long, env = "BERTH_DRILL_POOL")]
    pub pool: String,
    /// A copy to drill: a snapshot ID (snap:<pool>:<key>) or a manifest name (snap-<key>).
    /// Repeat for several.
    #[arg(long = "snapshot", value_name = "ID|MANIFEST")]
    pub snapshots: Vec<String>,
    /// Drill every copy in the store.
    #[arg(long)]
    pub all: bool,
    /// Drill the N most recent copies (by the time each copy started, from its manifest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub latest: Option<u32>,
    /// Directory to restore into, on a local filesystem with room for the largest copy
    /// drilled; each copy is removed once checked. Default: a new directory under $TMPDIR,
    /// removed at the end.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Exit 0 when the store holds no copy to drill (by default that is a failure: a drill
    /// that checks nothing proves nothing).
    #[arg(long)]
    pub allow_empty: bool,
    /// Also write the result in the Prometheus text format to this file (atomically, for
    /// node-exporter's textfile collector: name it <something>.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// Which copies to drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These manifests, in this order.
    Named(Vec<String>),
    All,
    /// The N most recent by `created`.
    Latest(usize),
}

/// Why a drill could not check any copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] Box<crate::config::ConfigError>),
    #[error("pool {pool:?} is not in the configuration {origin}; {choices}")]
    NoSuchPool { pool: String, origin: String, choices: String },
    #[error(
        "pool {pool:?} of the configuration {origin} is a {kind} pool: snapshot copies are kept on a shared (NFS) \
         pool's export; {choices}"
    )]
    NotShared { pool: String, origin: String, kind: &'static str, choices: String },
    #[error("pool {pool:?}: {source}")]
    OpenPool { pool: String, source: Box<crate::backend::Error> },
    #[error("pool {pool:?}: opening its store of snapshot copies: {source}")]
    Store { pool: String, source: Box<crate::archive::Error> },
    #[error("{given:?} is neither a snapshot ID (snap:<pool>:<32 hex digits>) nor a manifest name")]
    BadCopy { given: String },
    #[error("scratch directory {path}: {source}")]
    Scratch { path: String, source: std::io::Error },
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub pool: String,
    /// One per copy checked, in the order they ran.
    pub drills: Vec<Drill>,
    /// Why no copy could be checked (configuration, pool, store, scratch directory).
    pub error: Option<String>,
    pub allow_empty: bool,
    /// When the run ended.
    pub finished: SystemTime,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn passed(&self) -> usize {
        self.drills.iter().filter(|d| d.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.drills.len() - self.passed()
    }

    /// Data bytes restored and read back, over every copy.
    pub fn bytes(&self) -> u64 {
        self.drills.iter().map(|d| d.bytes).sum()
    }

    /// The verdict of the whole run: every copy passed, and at least one was checked
    /// (unless an empty store is allowed).
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.failed() == 0 && (!self.drills.is_empty() || self.allow_empty)
    }

    /// The result as Prometheus text, for node-exporter's textfile collector.
    pub fn metrics(&self) -> String {
        let pool = [("pool", self.pool.as_str())];
        let finished = self.finished.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut w = Writer::with_capacity(1024);
        w.family(
            "berth_drill_last_run_timestamp_seconds",
            Kind::Gauge,
            "When the last restore drill of the pool's snapshot copies ended, in seconds since the Unix epoch.",
        );
        w.sample("berth_drill_last_run_timestamp_seconds", &pool, finished);
        w.family(
            "berth_drill_passed",
            Kind::Gauge,
            "1 when the last restore drill checked at least one copy and every copy passed, else 0.",
        );
        w.sample("berth_drill_passed", &pool, if self.ok() { 1.0 } else { 0.0 });
        w.family("berth_drill_copies", Kind::Gauge, "Snapshot copies the last restore drill checked, by result.");
        for (result, n) in [("passed", self.passed()), ("failed", self.failed())] {
            w.sample("berth_drill_copies", &[("pool", &self.pool), ("result", result)], n as f64);
        }
        w.family("berth_drill_duration_seconds", Kind::Gauge, "How long the last restore drill took, in seconds.");
        w.sample("berth_drill_duration_seconds", &pool, self.elapsed.as_secs_f64());
        w.family("berth_drill_bytes", Kind::Gauge, "Data bytes the last restore drill restored and read back.");
        w.sample("berth_drill_bytes", &pool, self.bytes() as f64);
        w.finish()
    }
}

impl fmt::Display for Outcome {
    /// The summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "drill: {} passed, {} failed in {:.3}s", self.passed(), self.failed(), self.elapsed.as_secs_f64())
    }
}

/// What `--snapshot` names: a snapshot ID's manifest, or a manifest name as it is.
pub fn manifest_name(given: &str) -> Result<String, Error> {
    if let Some(id) = ids::parse(ids::Kind::Snapshot, given) {
        return Ok(snapshot_manifest(id.key));
    }
    check_name("manifest", given).map_err(|_| Error::BadCopy { given: given.to_string() })?;
    Ok(given.to_string())
}

/// The selection the arguments ask for (clap makes exactly one of them present).
pub fn selection(args: &DrillArgs) -> Result<Selection, Error> {
    if args.all {
        return Ok(Selection::All);
    }
    if let Some(n) = args.latest {
        return Ok(Selection::Latest(n as usize));
    }
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for given in &args.snapshots {
        let name = manifest_name(given)?;
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok(Selection::Named(names))
}

/// The configuration's NFS pool `pool`, or why it is not one.
pub fn nfs_pool<'a>(config: &'a Config, origin: &str, pool: &str) -> Result<&'a crate::config::NfsPool, Error> {
    let shared: Vec<&str> = config
        .pools
        .iter()
        .filter_map(|p| if let PoolConfig::Nfs(n) = p { Some(n.name.as_str()) } else { None })
        .collect();
    let choices = if shared.is_empty() {
        "it has no NFS pool".to_string()
    } else {
        format!("its NFS pools: {}", shared.join(", "))
    };
    let (origin, pool_name) = (origin.to_string(), pool.to_string());
    match config.pools.iter().find(|p| p.name() == pool) {
        None => Err(Error::NoSuchPool { pool: pool_name, origin, choices }),
        Some(PoolConfig::Nfs(n)) => Ok(n),
        Some(other) => {
            let kind = match other {
                PoolConfig::Hostpath(_) => "hostpath",
                PoolConfig::Block(_) => "block",
                PoolConfig::Device(_) => "device",
                PoolConfig::Nfs(_) => "nfs",
            };
            Err(Error::NotShared { pool: pool_name, origin, kind, choices })
        }
    }
}

/// The manifests to drill, with a failed drill for each manifest that `--latest` could
/// not read to learn its age (a damaged manifest is a failed copy, whatever its age; one
/// deleted since the listing is left out).
pub fn pick(store: &dyn ChunkStore, selection: &Selection) -> Result<(Vec<String>, Vec<Drill>), crate::archive::Error> {
    match selection {
        Selection::Named(names) => Ok((names.clone(), Vec::new())),
        Selection::All => {
            let mut names = store.list_files(Area::Manifests)?;
            names.sort();
            Ok((names, Vec::new()))
        }
        Selection::Latest(n) => {
            let mut dated = Vec::new();
            let mut unreadable = Vec::new();
            for name in store.list_files(Area::Manifests)? {
                match restore::load(store, &name) {
                    Ok(m) => dated.push((m.created, name)),
                    // Deleted since the listing: not a copy any more.
                    Err(crate::archive::Error::ManifestMissing { .. }) => {}
                    Err(e) => unreadable.push(Drill {
                        manifest: name,
                        failure: Some(format!("cannot be read to learn its age: {e}")),
                        bytes: 0,
                        chunks: 0,
                        entries: 0,
                        elapsed: Duration::ZERO,
                    }),
                }
            }
            // Newest first; equal times in name order, so a run is repeatable.
            dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            Ok((dated.into_iter().take(*n).map(|(_, name)| name).collect(), unreadable))
        }
    }
}

/// A scratch directory: the one given, or one made here and removed on drop.
struct Scratch {
    path: PathBuf,
    made: bool,
}

impl Scratch {
    fn new(given: Option<&Path>) -> Result<Scratch, Error> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Scratch { path, source }
        };
        if let Some(path) = given {
            let meta = std::fs::metadata(path).map_err(err(path))?;
            if !meta.is_dir() {
                return Err(err(path)(std::io::Error::other("not a directory")));
            }
            return Ok(Scratch { path: path.to_path_buf(), made: false });
        }
        let path = std::env::temp_dir().join(format!("berth-drill-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(err(&path))?;
        Ok(Scratch { path, made: true })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn prepare(args: &DrillArgs) -> Result<(Box<dyn ChunkStore>, Selection, Scratch), Error> {
    let selection = selection(args)?;
    let config = Config::load(args.config.as_deref()).map_err(Box::new)?;
    let origin = args.config.as_ref().map_or_else(|| "<embedded default>".to_string(), |p| p.display().to_string());
    let pool = nfs_pool(&config, &origin, &args.pool)?;
    let opened = NfsPool::open(pool, Arc::new(crate::mount::LinuxSyscall))
        .map_err(|e| Error::OpenPool { pool: args.pool.clone(), source: Box::new(e) })?;
    let store = opened.archive().map_err(|e| Error::Store { pool: args.pool.clone(), source: Box::new(e) })?;
    let scratch = Scratch::new(args.scratch.as_deref())?;
    Ok((store, selection, scratch))
}

/// Drills `names` in turn, reporting each result as it comes. A copy found by listing the
/// store (`listed`) whose drill failed and whose manifest is gone by then was deleted
/// meanwhile (a deletion removes the manifest first, then the chunks only it needed): it
/// is left out, with a SKIP line, rather than failed. A copy asked for by name fails.
pub fn drill_each(
    store: &dyn ChunkStore,
    names: &[String],
    listed: bool,
    scratch: &Path,
    report: &mut dyn FnMut(&str),
) -> Vec<Drill> {
    let mut drills = Vec::new();
    for name in names {
        let drill = restore::verify(store, name, scratch);
        if listed && !drill.passed() && matches!(store.read_file(Area::Manifests, name), Ok(None)) {
            report(&format!("SKIP {name}: deleted from the store while it was drilled"));
            continue;
        }
        report(&drill.to_string());
        drills.push(drill);
    }
    drills
}

/// Runs the drill the arguments ask for; `report` sees each copy's line as it comes.
pub fn run(args: &DrillArgs, report: &mut dyn FnMut(&str)) -> Outcome {
    let start = Instant::now();
    let mut outcome = Outcome {
        pool: args.pool.clone(),
        drills: Vec::new(),
        error: None,
        allow_empty: args.allow_empty,
        finished: SystemTime::now(),
        elapsed: Duration::ZERO,
    };
    let checked = prepare(args).and_then(|(store, selection, scratch)| {
        let (names, unreadable) = pick(store.as_ref(), &selection)
            .map_err(|e| Error::Store { pool: args.pool.clone(), source: Box::new(e) })?;
        for drill in unreadable {
            report(&drill.to_string());
            outcome.drills.push(drill);
        }
        let listed = !matches!(selection, Selection::Named(_));
        outcome.drills.extend(drill_each(store.as_ref(), &names, listed, &scratch.path, report));
        Ok(())
    });
    outcome.error = checked.err().map(|e| e.to_string());
    outcome.finished = SystemTime::now();
    outcome.elapsed = start.elapsed();
    outcome
}

/// `berth drill`: prints a line per copy and the summary; `true` when the run passed.
pub fn main(args: &DrillArgs) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "berth drill: not running as root: restoring a file owned by another user, or a device node, will fail"
        );
    }
    let outcome = run(args, &mut |line| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    });
    if let Some(e) = &outcome.error {
        eprintln!("berth drill: {e}");
    } else if outcome.drills.is_empty() {
        let allowed = if args.allow_empty { " (allowed by --allow-empty)" } else { "; nothing was checked" };
        eprintln!("berth drill: pool {:?} holds no snapshot copy to drill{allowed}", args.pool);
    }
    println!("{outcome}");
    let mut ok = outcome.ok();
    if let Some(path) = &args.metrics_file
        && let Err(e) = crate::durable::write(path, outcome.metrics().as_bytes())
    {
        eprintln!("berth drill: writing the metrics file {}: {e}", path.display());
        ok = false;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::{find, parse};

    fn drill(name: &str, failure: Option<&str>, bytes: u64) -> Drill {
        Drill {
            manifest: name.into(),
            failure: failure.map(Into::into),
            bytes,
            chunks: 1,
            entries: 1,
            elapsed: Duration::from_millis(5),
        }
    }

    fn outcome(drills: Vec<Drill>) -> Outcome {
        Outcome {
            pool: "shared".into(),
            drills,
            error: None,
            allow_empty: false,
            finished: UNIX_EPOCH + Duration::from_millis(1_765_000_000_250),
            elapsed: Duration::from_millis(1234),
        }
    }

    #[test]
    fn metrics_render_every_family_with_help_and_type() {
        let text = outcome(vec![drill("snap-a", None, 100), drill("snap-b", Some("chunk x is missing"), 20)]).metrics();
        let expected = "\
# HELP berth_drill_last_run_timestamp_seconds When the last restore drill of the pool's snapshot copies ended, in seconds since the Unix epoch.
# TYPE berth_drill_last_run_timestamp_seconds gauge
berth_drill_last_run_timestamp_seconds{pool=\"shared\"} 1765000000.25
# HELP berth_drill_passed 1 when the last restore drill checked at least one copy and every copy passed, else 0.
# TYPE berth_drill_passed gauge
berth_drill_passed{pool=\"shared\"} 0
# HELP berth_drill_copies Snapshot copies the last restore drill checked, by result.
# TYPE berth_drill_copies gauge
berth_drill_copies{pool=\"shared\",result=\"passed\"} 1
berth_drill_copies{pool=\"shared\",result=\"failed\"} 1
# HELP berth_drill_duration_seconds How long the last restore drill took, in seconds.
# TYPE berth_drill_duration_seconds gauge
berth_drill_duration_seconds{pool=\"shared\"} 1.234
# HELP berth_drill_bytes Data bytes the last restore drill restored and read back.
# TYPE berth_drill_bytes gauge
berth_drill_bytes{pool=\"shared\"} 120
";
        assert_eq!(text, expected);
        let samples = parse(&text).expect("the strict parser reads it back");
        assert_eq!(samples.len(), 6);
    }

    #[test]
    fn the_run_passes_only_when_every_copy_did_and_one_was_checked() {
        let pool = [("pool", "shared")];
        let passed = |o: &Outcome| find(&parse(&o.metrics()).expect("parse"), "berth_drill_passed", &pool);
        let all_good = outcome(vec![drill("snap-a", None, 1), drill("snap-b", None, 2)]);
        assert!(all_good.ok());
        assert_eq!(passed(&all_good), Some(1.0));
        assert_eq!(all_good.to_string(), "drill: 2 passed, 0 failed in 1.234s");

        let empty = outcome(Vec::new());
        assert!(!empty.ok());
        assert_eq!(passed(&empty), Some(0.0));
        let allowed = Outcome { allow_empty: true, ..empty };
        assert!(allowed.ok());
        assert_eq!(passed(&allowed), Some(1.0));

        let broken = Outcome { error: Some("pool unreachable".into()), ..outcome(Vec::new()) };
        assert!(!broken.ok());
        let text = broken.metrics();
        let samples = parse(&text).expect("parse");
        assert_eq!(find(&samples, "berth_drill_copies", &[("pool", "shared"), ("result", "failed")]), Some(0.0));
    }

    #[test]
    fn pool_labels_are_escaped() {
        let o = Outcome { pool: "a\"b\\c".into(), ..outcome(Vec::new()) };
        let text = o.metrics();
        assert!(text.contains("berth_drill_bytes{pool=\"a\\\"b\\\\c\"} 0\n"), "{text}");
        let samples = parse(&text).expect("parse");
        assert_eq!(find(&samples, "berth_drill_bytes", &[("pool", "a\"b\\c")]), Some(0.0));
    }

    #[test]
    fn copies_are_named_by_snapshot_id_or_manifest() {
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(manifest_name(&format!("snap:local:{key}")).expect("id"), format!("snap-{key}"));
        assert_eq!(manifest_name(&format!("snap-{key}")).expect("name"), format!("snap-{key}"));
        assert_eq!(manifest_name("nightly.1").expect("name"), "nightly.1");
        for bad in ["", "../x", "snap:local:xyz/..", ".hidden", "a b"] {
            let err = manifest_name(bad).expect_err(bad).to_string();
            assert!(err.contains("neither a snapshot ID"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_pool_must_be_an_nfs_pool_of_the_configuration() {
        let config = Config::parse(
            "pools:\n  - {name: local, type: hostpath, path: /tmp/x}\n  \
             - {name: shared, type: nfs, server: 127.0.0.1, export: /e}\n",
            "test.yaml",
        )
        .expect("config");
        assert_eq!(nfs_pool(&config, "test.yaml", "shared").expect("nfs pool").name, "shared");
        let missing = nfs_pool(&config, "test.yaml", "other").expect_err("missing").to_string();
        assert_eq!(missing, "pool \"other\" is not in the configuration test.yaml; its NFS pools: shared");
        let local = nfs_pool(&config, "test.yaml", "local").expect_err("hostpath").to_string();
        assert!(local.starts_with("pool \"local\" of the configuration test.yaml is a hostpath pool"), "{local}");
        assert!(local.ends_with("its NFS pools: shared"), "{local}");
        let none = Config::load(None).expect("default");
        let err = nfs_pool(&none, "<embedded default>", "default").expect_err("no nfs").to_string();
        assert!(err.ends_with("it has no NFS pool"), "{err}");
    }

    #[test]
    fn a_listed_copy_deleted_meanwhile_is_skipped_and_a_named_one_fails() {
        use crate::archive::store::DirStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open(&dir.path().join("store")).expect("store");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("f"), b"data").expect("write");
        crate::archive::copy::copy_tree(&store, "snap-kept", &src, &crate::archive::copy::CopyOptions::default())
            .expect("copy");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).expect("mkdir");
        // "snap-gone" was listed, then deleted before its turn.
        let names = ["snap-gone".to_string(), "snap-kept".to_string()];
        let mut lines = Vec::new();
        let drills = drill_each(&store, &names, true, &scratch, &mut |l| lines.push(l.to_string()));
        assert_eq!(drills.len(), 1);
        assert!(drills[0].passed(), "{}", drills[0]);
        assert_eq!(lines[0], "SKIP snap-gone: deleted from the store while it was drilled");
        assert!(lines[1].starts_with("PASS snap-kept: "), "{}", lines[1]);
        let drills = drill_each(&store, &names, false, &scratch, &mut |_| {});
        assert_eq!(drills.len(), 2);
        assert!(drills[0].to_string().contains("does not exist in the store"), "{}", drills[0]);
    }

    #[test]
    fn latest_picks_the_newest_and_fails_unreadable_manifests() {
        use crate::archive::store::DirStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open(dir.path()).expect("store");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("f"), b"data").expect("write");
        let opts = crate::archive::copy::CopyOptions::default();
        for name in ["snap-old", "snap-mid", "snap-new"] {
            crate::archive::copy::copy_tree(&store, name, &src, &opts).expect("copy");
        }
        // Give the copies distinct ages by rewriting their `created`.
        for (name, created) in [("snap-old", 100), ("snap-mid", 200), ("snap-new", 300)] {
            let mut m = restore::load(&store, name).expect("load");
            m.created = created;
            std::fs::write(dir.path().join("manifests").join(name), m.encode()).expect("rewrite");
        }
        std::fs::write(dir.path().join("manifests/snap-bad"), b"garbage").expect("damage");
        let (names, unreadable) = pick(&store, &Selection::Latest(2)).expect("pick");
        assert_eq!(names, ["snap-new", "snap-mid"]);
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].manifest, "snap-bad");
        assert!(unreadable[0].to_string().starts_with("FAIL snap-bad: "), "{}", unreadable[0]);
        let (all, _) = pick(&store, &Selection::All).expect("all");
        assert_eq!(all, ["snap-bad", "snap-mid", "snap-new", "snap-old"]);
    }
}
