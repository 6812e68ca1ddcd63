//! `ferry-agent`: the node agent. Watches Nodes and keeps this node's routes
//! to every other node's pod CIDRs in step.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_dataplane::nodes::NodeInfo;
use ferry_dataplane::routing::{Mode, Router};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Routing {
    /// Routes via the other nodes' addresses (nodes share L2).
    Direct,
    /// A VXLAN overlay between nodes.
    Vxlan,
    /// No inter-node routes (something else provides them).
    None,
}

#[derive(Debug, Parser)]
#[command(name = "ferry-agent", version, about = "Ferry's node agent")]
struct Cli {
    /// Kubeconfig to reach the API; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value = "direct")]
    routing: Routing,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = 1)]
    vxlan_vni: u32,
    /// VXLAN UDP port (8472, as flannel and Cilium use on Linux).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
    /// Seconds between full re-syncs, repairing anything changed behind the
    /// agent's back.
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove every route and device the agent installed, then exit.
    Uninstall,
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::incluster()
            .context("in-cluster configuration (pass --kubeconfig outside a cluster)")?,
    };
    Client::try_from(config).context("building the API client")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(connection);
    let mode = match cli.routing {
        Routing::Vxlan => Some(Mode::Vxlan {
            vni: cli.vxlan_vni,
            port: cli.vxlan_port,
        }),
        Routing::Direct => Some(Mode::Direct),
        Routing::None => None,
    };
    let router = Router::new(handle, mode.unwrap_or(Mode::Direct));
    if let Some(Command::Uninstall) = cli.command {
        router.uninstall().await.context("removing routes")?;
        tracing::info!("uninstalled");
        return Ok(());
    }

    let client = client(cli.kubeconfig.as_ref()).await?;
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store();
    let mut events = reflector(writer, watcher(nodes, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    // The stream is driven on its own task; the loop below only needs to
    // know that something changed.
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "node watch error");
                continue;
            }
            let _ = changed_tx.try_send(());
        }
    });
    reader
        .wait_until_ready()
        .await
        .context("waiting for the initial list of Nodes")?;
    let mut resync = tokio::time::interval(Duration::from_secs(cli.resync_seconds.max(1)));
    loop {
        if mode.is_some() {
            let infos: Vec<NodeInfo> = reader
                .state()
                .iter()
                .map(|n| NodeInfo::from_node(n))
                .collect();
            match infos.iter().find(|n| n.name == cli.node_name) {
                None => tracing::warn!(node = %cli.node_name, "this node has no Node object yet"),
                Some(local) => match router.sync(local, &infos).await {
                    Ok(stats) => tracing::debug!(
                        routes = stats.routes,
                        removed = stats.removed,
                        "routes synced"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "route sync failed; retrying on the next event")
                    }
                },
            }
        }
        tokio::select! {
            c = changed.recv() => {
                if c.is_none() {
                    anyhow::bail!("node watch ended");
                }
                // Coalesce a burst of node events into one sync.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while changed.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for a signal")?;
                // Routes stay: pods keep talking while the agent restarts.
                tracing::info!("stopping; routes stay in place");
                return Ok(());
            }
        }
    }
}
