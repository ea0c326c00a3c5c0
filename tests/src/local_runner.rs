//! The local runner: a kubelet for the aggregator's pods on a control plane that has none.
//!
//! It does what a kubelet does for these pods, no more: binds each new pod to a local Node,
//! runs the pod's container as a local process with exactly its command, args and environment,
//! probes its readiness path and reports it in the pod's status (so the ReplicaSet and
//! Deployment controllers count it, and the operator sees AggregatorReady), restarts the process
//! when it exits, and on deletion sends SIGTERM, waits, then removes the pod. This proves the
//! Deployment the operator writes is runnable, not just well-formed.
//!
//! Two things a real node provides come from the runner instead: AWS credentials from its own
//! environment (what IRSA or pod identity injects), and a free local port for the container's
//! listen address (what the pod's own network namespace gives).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use metrics_pipeline_test_support::{free_port, terminate};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The Node every pod run here is bound to.
pub const NODE: &str = "metrics-pipeline-local-runner";
/// The programs' listen-address variables (aggregator, operator), pointed at a free local port.
const LISTEN_ENVS: [&str; 2] = ["AGGREGATOR_LISTEN", "LISTEN"];
/// What the runner passes on from its own environment, as a pod identity webhook would.
const CREDENTIALS: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Runs the selected pods of one namespace until stopped.
pub struct LocalRunner {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalRunner {
    /// Runs the pods of `namespace` that match the label `selector`. `bin_dir` holds the programs
    /// the containers name; `log_dir` receives one log per pod.
    pub async fn start(client: &Client, namespace: &str, selector: &str, bin_dir: PathBuf, log_dir: PathBuf) -> anyhow::Result<Self> {
        register_node(client).await?;
        std::fs::create_dir_all(&log_dir)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (client, selector) = (client.clone(), selector.to_owned());
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut node = LocalNode { pods, client, selector, bin_dir, log_dir, running: HashMap::new() };
            loop {
                if let Err(error) = node.sync().await {
                    eprintln!("[local-runner] {error:#}");
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            node.stop_all().await;
        });
        Ok(Self { stop: Some(stop), task })
    }

    /// Stops every process as a node shutdown would: SIGTERM, then wait for it to exit.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        let _ = self.task.await;
    }
}

/// The directory holding this workspace's programs: the one the running executable was built into.
pub fn workspace_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|dir| dir.join("metrics-aggregator").is_file())
        .map(Path::to_path_buf)
        .context("metrics-aggregator is not built next to this program: run `cargo build --workspace --bins` first")
}

async fn register_node(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    let now = jiff::Timestamp::now().to_string();
    let ready = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "LocalRunner", "message": "pods run as local processes",
        "lastHeartbeatTime": now, "lastTransitionTime": now
    }]}});
    nodes.patch_status(NODE, &PatchParams::default(), &Patch::Merge(ready)).await?;
    Ok(())
}

/// How to start a pod's container, worked out once when the pod is admitted.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))
    }
}

struct Process {
    container: String,
    /// The pod's terminationGracePeriodSeconds: how long SIGTERM has before SIGKILL.
    grace: Duration,
    child: Child,
    launch: Launch,
    port: u16,
    readiness_path: Option<String>,
    ready: bool,
    restarts: i32,
}

struct LocalNode {
    pods: Api<Pod>,
    client: Client,
    selector: String,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    running: HashMap<String, Process>,
}

impl LocalNode {
    async fn sync(&mut self) -> anyhow::Result<()> {
        let pods = self.pods.list(&ListParams::default().labels(&self.selector)).await?;
        for pod in pods {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&name).await;
                self.pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.ok();
                continue;
            }
            if !self.running.contains_key(&name) {
                self.admit(&pod).await.with_context(|| format!("pod {name}"))?;
            }
            self.report(&name).await?;
        }
        Ok(())
    }

    /// Binds a new pod to this node and starts its container.
    async fn admit(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let name = pod.name_any();
        let spec = pod.spec.as_ref().context("a pod without spec")?;
        if spec.node_name.is_none() {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}});
            self.pods.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await?;
        }
        let [container] = spec.containers.as_slice() else { bail!("the local runner runs pods of one container") };
        let command: Vec<&String> = container.command.iter().flatten().chain(container.args.iter().flatten()).collect();
        let Some((program, args)) = command.split_first() else { bail!("the container names no command") };
        let port = free_port()?;
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, var.value_from.as_ref().and_then(|from| from.field_ref.as_ref())) {
                (Some(value), _) => value.clone(),
                (None, Some(field)) if field.field_path == "metadata.name" => name.clone(),
                (None, Some(field)) if field.field_path == "metadata.namespace" => pod.namespace().unwrap_or_default(),
                _ => bail!("env {}: the local runner resolves only values and the pod's name and namespace", var.name),
            };
            // The pod's own network namespace would give it the container port: here, a free one.
            let value = if LISTEN_ENVS.contains(&var.name.as_str()) { format!("127.0.0.1:{port}") } else { value };
            env.push((var.name.clone(), value));
        }
        env.extend(CREDENTIALS.iter().filter_map(|name| std::env::var(name).ok().map(|value| (name.to_string(), value))));
        if spec.automount_service_account_token != Some(false) {
            let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
            let kubeconfig = self.mount_token(&name, &service_account).await?;
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }
        let launch = Launch {
            program: self.bin_dir.join(program),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            log: self.log_dir.join(format!("{name}.log")),
        };
        let child = launch.spawn()?;
        let readiness_path = container.readiness_probe.as_ref().and_then(|probe| probe.http_get.as_ref()).and_then(|get| get.path.clone());
        let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        self.running.insert(
            name,
            Process { container: container.name.clone(), grace, child, launch, port, readiness_path, ready: false, restarts: 0 },
        );
        Ok(())
    }

    /// What a kubelet mounts for in-cluster access: a token of the pod's ServiceAccount (from
    /// the TokenRequest API), here written as a kubeconfig for this API server.
    async fn mount_token(&self, pod: &str, service_account: &str) -> anyhow::Result<PathBuf> {
        let namespace = self.pods.namespace().unwrap_or("default").to_owned();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &namespace);
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}});
        let response: serde_json::Value = accounts.create_subresource("token", service_account, &PostParams::default(), &request).await?;
        let token = response["status"]["token"].as_str().context("TokenRequest returned no token")?;
        let own = kube::config::Kubeconfig::read().context("reading the runner's own kubeconfig")?;
        let context = own
            .current_context
            .as_deref()
            .and_then(|current| own.contexts.iter().find(|c| c.name == current))
            .and_then(|c| c.context.clone());
        let cluster_name = context.map(|c| c.cluster).unwrap_or_default();
        let cluster = own
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.clone())
            .context("no current cluster in the kubeconfig")?;
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "cluster", "cluster": {"server": cluster.server, "certificate-authority": cluster.certificate_authority}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": service_account, "namespace": namespace}}]
        });
        let path = self.log_dir.join(format!("{pod}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)?;
        Ok(path)
    }

    /// Probes readiness, restarts an exited container, and writes the pod's status on a change.
    async fn report(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.running.get_mut(name).expect("admitted");
        let exited = process.child.try_wait()?.is_some();
        let ready = !exited && probe(process.port, process.readiness_path.as_deref().unwrap_or("/")).await;
        if exited {
            // restartPolicy Always, without the back-off a kubelet would add.
            process.child = process.launch.spawn()?;
            process.restarts += 1;
        }
        let process = self.running.get_mut(name).expect("admitted");
        if ready == process.ready && !exited {
            return Ok(());
        }
        process.ready = ready;
        let now = jiff::Timestamp::now().to_string();
        let flag = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now}
            ],
            "containerStatuses": [{
                "name": process.container, "ready": ready, "started": true, "restartCount": process.restarts,
                "image": "local", "imageID": "", "state": {"running": {"startedAt": now}}
            }]
        }});
        self.pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
        Ok(())
    }

    /// SIGTERM, then up to the pod's grace period (the aggregator flushes and checkpoints).
    async fn terminate(&mut self, name: &str) {
        let Some(mut process) = self.running.remove(name) else { return };
        terminate(&mut process.child, process.grace).await;
    }

    async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.terminate(&name).await;
        }
    }
}

/// An HTTP GET of `path` on the local port: true on a 2xx answer.
async fn probe(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok(true)))
}
