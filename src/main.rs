//! The berth command line: `berth serve`, `berth doctor`, `berth salvage`, `berth csi`,
//! `berth bench`, `berth drill`, `berth version`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth::config::Config;
use berth::engine::{Engine, Placement};
use berth::mount::LinuxSyscall;
use berth::server::{self, Mode};
use clap::{Parser, Subcommand, ValueEnum};

/// Every allocation is counted, for `berth_heap_*` on /metrics and `berth bench`.
#[global_allocator]
static HEAP: berth::metrics::heap::Counting = berth::metrics::heap::Counting;

/// berth: a Kubernetes CSI driver for hostPath, block and NFS volumes.
#[derive(Parser)]
#[command(name = "berth", version = berth::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CSI Identity, Controller and Node services on a unix socket.
    Serve(ServeArgs),
    /// Check that this machine can run berth with a configuration; exits non-zero on any fail.
    Doctor(berth::doctor::DoctorArgs),
    /// Recover from damaged records, which `berth serve` refuses to start on: keeps a copy
    /// of the damaged files, keeps every record that still checks, and names each change
    /// it cannot. Run it with berth stopped.
    Salvage(SalvageArgs),
    /// Call any CSI driver's RPCs on its unix socket: identity, controller and node commands.
    Csi(berth::client::CsiArgs),
    /// Benchmark any CSI driver's socket: provisioning at scale, attach cycles, snapshots, footprint.
    Bench(berth::bench::BenchArgs),
    /// Restore drill: restore snapshot copies from an NFS pool's store into a scratch
    /// directory, check every chunk and byte, print PASS or FAIL per copy; exits non-zero
    /// unless every copy passed.
    Drill(berth::drill::DrillArgs),
    /// Print berth's version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Socket to serve on, as unix:///path/csi.sock.
    #[arg(long, env = "BERTH_ENDPOINT", default_value = "unix:///run/berth/csi.sock")]
    endpoint: String,
    /// This node's ID (the Kubernetes node name); defaults to the hostname.
    #[arg(long, env = "BERTH_NODE_ID")]
    node_id: Option<String>,
    /// Configuration file (YAML); without it berth uses its embedded default: one hostPath
    /// pool "default" under /var/lib/berth/pools/default, state under /var/lib/berth.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Which services to serve.
    #[arg(long, env = "BERTH_MODE", value_enum, default_value = "all")]
    mode: Mode,
    /// The CSI driver name (must match the CSIDriver object and StorageClasses).
    #[arg(long, env = "BERTH_DRIVER_NAME", default_value = "local.berth.csi.io")]
    driver_name: String,
    /// Log verbosity (error, warn, info, debug, trace) or a tracing filter; RUST_LOG wins.
    #[arg(long, env = "BERTH_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log line format.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// At SIGTERM, how long in-flight operations may take to finish before berth stops
    /// anyway (their intent is recorded: the next start finishes or rolls them back). Keep
    /// it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "BERTH_DRAIN_SECONDS", default_value_t = 20)]
    drain_seconds: u64,
    /// Serve Prometheus metrics on /metrics, with /healthz and /readyz, at this HOST:PORT
    /// (e.g. 127.0.0.1:9808, or :9808 for every IPv6 and IPv4 address); off when unset.
    #[arg(long, env = "BERTH_METRICS_ADDRESS", value_name = "HOST:PORT")]
    metrics_address: Option<String>,
    /// Serve only /healthz (liveness: 200 while berth serves, also while a start finishes
    /// interrupted work) and /readyz (200 once Probe answers ready) at this HOST:PORT, for
    /// the kubelet's probes; off when unset.
    #[arg(long, env = "BERTH_HEALTH_ADDRESS", value_name = "HOST:PORT")]
    health_address: Option<String>,
    /// Let this group (a numeric GID) use the socket too (mode 0660 instead of 0600), for
    /// sidecars that run as a non-root user with it as a supplemental group.
    #[arg(long, env = "BERTH_SOCKET_GROUP", value_name = "GID")]
    socket_group: Option<u32>,
}

#[derive(clap::Args)]
struct SalvageArgs {
    /// Configuration file, as given to `berth serve` (it names the state directory).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Use a checkpoint that fails its checksum, for want of a backup: a record in it may
    /// be wrong in ways no check can see, so compare the records with the storage after.
    #[arg(long)]
    trust_checkpoint: bool,
}

fn salvage(args: SalvageArgs) -> Result<(), String> {
    init_logging("warn", LogFormat::Human);
    let config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let done = berth::state::salvage(&config.state_dir, args.trust_checkpoint).map_err(|e| e.to_string())?;
    println!("kept {} volume and {} snapshot records", done.volumes, done.snapshots);
    println!("the damaged files are copied to {}", done.kept_at.display());
    if done.lost.is_empty() {
        println!("nothing was lost");
    }
    for lost in &done.lost {
        println!("lost: {lost}");
    }
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    init_logging(&args.log_level, args.log_format);
    let config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => nix::unistd::gethostname()
            .map_err(|e| format!("no --node-id given and the hostname cannot be read: {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    berth::ids::check("node id", &node_id).map_err(|e| e.to_string())?;
    let placement = if args.mode == Mode::Controller { Placement::Central } else { Placement::OnNode };
    // Recovery from a crash runs once the socket is served (server::serve).
    let engine = Engine::open_unreconciled(config, node_id, Arc::new(LinuxSyscall), placement)?;
    // One thread does the async part (gRPC framing, metrics); every RPC's work runs on
    // the blocking pool (`csi::run`). A work-stealing runtime measured slower here: each
    // request woke a second worker to look for work it never found.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let served = runtime
        .block_on(server::serve(
            engine.shared(),
            &args.endpoint,
            &args.driver_name,
            args.mode,
            &server::HttpAddresses { metrics: args.metrics_address, health: args.health_address },
            std::time::Duration::from_secs(args.drain_seconds),
            args.socket_group,
        ))
        .map_err(|e| e.to_string());
    // Work still running past the drain limit is not waited for: the process exits, and
    // with it its hold on the state.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    served
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("berth {}", berth::VERSION);
            ExitCode::SUCCESS
        }
        Command::Doctor(args) => {
            let report = berth::doctor::run(&args, Arc::new(LinuxSyscall));
            match args.output {
                berth::doctor::Output::Table => print!("{}", report.table()),
                berth::doctor::Output::Json => println!("{}", report.json()),
            }
            if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Command::Salvage(args) => match salvage(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth salvage: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Csi(args) => {
            if berth::client::main(&args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Bench(args) => {
            if berth::bench::main(&args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Drill(args) => {
            init_logging("warn", LogFormat::Human);
            if berth::drill::main(&args) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
