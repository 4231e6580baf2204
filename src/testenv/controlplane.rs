//! etcd + kube-apiserver + kube-controller-manager on loopback, as envtest
//! runs them, from the binaries `hack/controlplane/build.sh` provides.

use std::fs::File;
use std::io::{self, Read as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use super::wait_for;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,endpointslice-controller,\
    garbage-collector-controller,namespace-controller,serviceaccount-controller,\
    disruption-controller";
const FIELD_MANAGER: &str = "testenv";
/// The binaries a control plane runs; kubectl is only a client.
const SERVERS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// A running control plane. Dropping it kills the processes and removes its
/// folder; the processes also die with the test process if it never drops it.
pub struct ControlPlane {
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    processes: Mutex<Vec<(&'static str, Child)>>,
    tempdir: Mutex<Option<TempDir>>,
}

impl ControlPlane {
    /// Builds (or finds) the binaries, starts them and waits until the API
    /// serves, the controllers run and the CRDs in `crds/` are established.
    /// [`ControlPlane::kubectl`] needs [`ControlPlane::start_with_kubectl`]:
    /// the demo does without, and a first run saves building it.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Self::start_from(super::tools::build("controlplane", &SERVERS).await?).await
    }

    /// [`ControlPlane::start`], with kubectl built too.
    pub async fn start_with_kubectl() -> anyhow::Result<ControlPlane> {
        let mut all = SERVERS.to_vec();
        all.push("kubectl");
        Self::start_from(super::tools::build("controlplane", &all).await?).await
    }

    async fn start_from(bin: PathBuf) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let root = target_dir().join("testenv");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        remove_stale_dirs(&root);
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("cp-{}-", std::process::id()))
            .tempdir_in(&root)?;
        let dir = tempdir.path().to_path_buf();
        let token = write_credentials(&dir)?;
        let [etcd_client, etcd_peer, api_port] = free_ports()?;
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &dir.join("ca.crt"), &token)?;
        let cp = ControlPlane {
            bin,
            dir,
            url,
            kubeconfig,
            processes: Mutex::new(Vec::new()),
            tempdir: Mutex::new(Some(tempdir)),
        };
        match cp.boot([etcd_client, etcd_peer, api_port]).await {
            Ok(()) => {
                tracing::info!(url = %cp.url, elapsed = ?started.elapsed(), "control plane ready");
                Ok(cp)
            }
            Err(e) => {
                // Keep the logs to read; the next start removes the folder.
                let tempdir = cp
                    .tempdir
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let _ = tempdir.map(TempDir::keep);
                Err(e.context(format!(
                    "the control plane did not start (logs in {})",
                    cp.dir.display()
                )))
            }
        }
    }

    async fn boot(&self, [etcd_client, etcd_peer, api_port]: [u16; 3]) -> anyhow::Result<()> {
        let etcd_client = format!("http://127.0.0.1:{etcd_client}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer}");
        self.launch(
            "etcd",
            &[
                &format!("--data-dir={}", self.dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_client}"),
                &format!("--advertise-client-urls={etcd_client}"),
                &format!("--listen-peer-urls={etcd_peer}"),
                &format!("--initial-advertise-peer-urls={etcd_peer}"),
                &format!("--initial-cluster=default={etcd_peer}"),
                // The data lives as long as the test run; durability only costs time.
                "--unsafe-no-fsync",
            ],
        )?;
        let file = |name: &str| self.dir.join(name).display().to_string();
        self.launch(
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", file("apiserver.crt")),
                &format!("--tls-private-key-file={}", file("apiserver.key")),
                &format!("--token-auth-file={}", file("tokens.csv")),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", file("sa.pub")),
                &format!("--service-account-signing-key-file={}", file("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                // Endpoints may not hold a loopback address, so the `kubernetes`
                // Service could never be published; nothing here needs it.
                "--endpoint-reconciler-type=none",
            ],
        )?;
        let client = self.client().await?;
        self.wait("kube-apiserver", "kube-apiserver /readyz", async || {
            // kube has no helper for non-resource paths; an empty-path request builder does it.
            let readyz = kube::core::Request::new("").get("readyz", &Default::default())?;
            Ok(client.request_text(readyz).await.ok().map(drop))
        })
        .await?;

        self.launch(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={}", self.kubeconfig.display()),
                &format!("--controllers={CONTROLLERS}"),
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )?;
        // The serviceaccount controller filling in `default` proves the
        // controller manager is connected and its controllers are running.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait(
            "kube-controller-manager",
            "ServiceAccount default/default",
            async || Ok(accounts.get_opt("default").await.ok().flatten().map(drop)),
        )
        .await?;

        self.install_crds(&client).await
    }

    /// One control plane per test binary, started on first use and stopped
    /// when the process exits. Panics if it cannot start (every caller gets
    /// the same message).
    pub async fn shared() -> &'static ControlPlane {
        static SHARED: tokio::sync::OnceCell<Result<ControlPlane, String>> =
            tokio::sync::OnceCell::const_new();
        extern "C" fn stop_shared() {
            if let Some(Ok(cp)) = SHARED.get() {
                cp.stop();
            }
        }
        let started = SHARED
            .get_or_init(|| async {
                let t0 = Instant::now();
                let cp = ControlPlane::start_with_kubectl()
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                eprintln!(
                    "testenv: control plane at {} ready in {:.2?} (folder {})",
                    cp.url,
                    t0.elapsed(),
                    cp.dir.display()
                );
                // A static is never dropped; this is the one place to clean up.
                // SAFETY: registers a plain function with no preconditions.
                unsafe { libc::atexit(stop_shared) };
                Ok(cp)
            })
            .await;
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("testenv: {e}"),
        }
    }

    /// A new client each call: a client belongs to the tokio runtime it was
    /// made on, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// The admin kubeconfig's client configuration.
    pub async fn config(&self) -> anyhow::Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// kubectl for this control plane; started by [`ControlPlane::start`]
    /// alone, the binary may be missing and the command then fails to spawn.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    pub fn server_url(&self) -> String {
        self.url.clone()
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name
    /// once its `default` ServiceAccount exists (pods need it to be admitted).
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let client = self.client().await?;
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let name = created.name_any();
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        wait_for(
            Duration::from_secs(30),
            &format!("ServiceAccount {name}/default"),
            async || Ok(accounts.get_opt("default").await?.map(drop)),
        )
        .await?;
        Ok(name)
    }

    fn launch(&self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let log = File::create(self.log_path(name))?;
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied_to_process(cmd).with_context(|| format!("starting {name}"))?;
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, child));
        Ok(())
    }

    /// [`wait_for`] that gives up early if a process died, and puts the tail
    /// of `component`'s log into the error.
    async fn wait(
        &self,
        component: &str,
        what: &str,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<()>>,
    ) -> anyhow::Result<()> {
        wait_for(START_TIMEOUT, what, async || {
            self.check_alive()?;
            check().await
        })
        .await
        // A process that died has put its own log into the error.
        .map_err(|e| match self.check_alive() {
            Ok(()) => e.context(self.log_tail(component)),
            Err(_) => e,
        })
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, child) in processes.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}); {}", self.log_tail(name));
            }
        }
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn log_tail(&self, name: &str) -> String {
        let path = self.log_path(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("last lines of {}:\n{tail}", path.display())
    }

    async fn install_crds(&self, client: &Client) -> anyhow::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "yaml")
                || path.file_name().is_some_and(|n| n == "kustomization.yaml")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            for crd in crds {
                let name = crd.name_any();
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .with_context(|| format!("applying {}", path.display()))?;
                let established = kube::runtime::wait::conditions::is_crd_established();
                tokio::time::timeout(
                    START_TIMEOUT,
                    kube::runtime::wait::await_condition(api.clone(), &name, established),
                )
                .await
                .with_context(|| format!("CRD {name} was not established"))??;
            }
        }
        Ok(())
    }

    fn stop(&self) {
        let processes = std::mem::take(
            &mut *self
                .processes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // Reverse start order: clients first, so nothing logs about a vanished etcd.
        for (_, mut child) in processes.into_iter().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(
            self.tempdir
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Folders of test processes that were killed before they could clean up.
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| {
            n.strip_prefix("cp-")?
                .split('-')
                .next()?
                .parse::<i32>()
                .ok()
        }) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes the serving certificate (with its CA), the ServiceAccount signing
/// key and the admin token file; returns the admin token.
fn write_credentials(dir: &Path) -> anyhow::Result<String> {
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "testenv-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let serving_key = KeyPair::generate()?;
    let mut serving =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    let sa_key = KeyPair::generate()?;
    let mut random = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut random)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();

    for (name, content) in [
        ("ca.crt", ca.pem()),
        ("apiserver.crt", serving_cert.pem()),
        ("apiserver.key", serving_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        // kube-apiserver reads public keys only from a public-key PEM, not PKCS#8.
        ("sa.pub", sa_key.public_key_pem()),
        (
            "tokens.csv",
            format!("{token},admin,admin,\"system:masters\"\n"),
        ),
    ] {
        std::fs::write(dir.join(name), content)?;
    }
    Ok(token)
}

fn write_kubeconfig(path: &Path, url: &str, ca: &Path, token: &str) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "testenv", "cluster": { "server": url, "certificate-authority": ca } }],
        "users": [{ "name": "admin", "user": { "token": token } }],
        "contexts": [{ "name": "testenv", "context": { "cluster": "testenv", "user": "admin" } }],
        "current-context": "testenv",
    });
    std::fs::write(path, serde_saphyr::to_string(&config)?)?;
    Ok(())
}

fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    // All listeners stay open until every port is chosen, so none repeats.
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Spawns `cmd` so that it gets SIGKILL when this process ends, however it
/// ends. PR_SET_PDEATHSIG fires when the *thread* that forked exits, so every
/// child is forked by one thread that lives as long as the process.
fn spawn_tied_to_process(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_deathsig(&mut cmd));
                }
            })
            .expect("cannot start the testenv spawner thread");
        jobs
    });
    let gone = || io::Error::other("the testenv spawner thread is gone");
    let (reply, result) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

fn spawn_with_deathsig(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid), without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    };
    cmd.spawn()
}
