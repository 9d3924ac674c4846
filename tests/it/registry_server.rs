//! A real `docker-registry` (distribution 2.8) on 127.0.0.1 for tests, with optional htpasswd
//! basic auth, storage in a temp dir, and `skopeo` to push OCI layouts into it.
//!
//! The registry is a child process killed on drop. Nothing here touches the network beyond
//! 127.0.0.1.
#![allow(dead_code)] // a toolbox: each test file uses its own part of it

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgstore::Digest;

/// How long a starting registry may take before the test gives up (not a timing assertion).
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `docker-registry serve` on a free 127.0.0.1 port.
#[derive(Debug)]
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry requiring basic auth (htpasswd, bcrypt) for `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for registry");
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage dir");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: imgstore-test-secret\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apache2-utils, see scripts/deps.sh)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
            writeln!(
                config,
                "auth:\n  htpasswd:\n    realm: imgstore-test\n    path: {}",
                htpasswd.display()
            )
            .expect("format into a String");
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        let mut registry = Self {
            child: None,
            dir,
            port,
            credentials,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup registry log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry (see scripts/deps.sh)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("poll docker-registry"))
            {
                panic!(
                    "docker-registry exited with {status} during startup; log:\n{}",
                    self.log()
                );
            }
            if self.answers_v2() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer GET /v2/ within {START_LIMIT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (200, or 401 with auth).
    fn answers_v2(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).is_ok() && (head.ends_with(b" 200") || head.ends_with(b" 401"))
    }

    /// `127.0.0.1:<port>`: the registry host to give the client.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's storage root (`rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes: overwrite it to serve corrupt data.
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_dir()
            .join("docker/registry/v2/blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// The registry's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Kill the registry process (SIGKILL) and reap it; storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the registry again on the same port and storage, after [`TestRegistry::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn skopeo() -> Command {
        let mut cmd = Command::new("skopeo");
        // The system policy may demand signatures; tests push and inspect their own images.
        cmd.arg("--insecure-policy");
        cmd
    }

    /// Push tag `tag` of the OCI layout at `layout` to `<repository>:<tag>` here, keeping
    /// every manifest and blob byte for byte (`--all --preserve-digests`).
    pub fn push_oci_layout(&self, layout: &Path, repository: &str, tag: &str) {
        let mut cmd = Self::skopeo();
        cmd.args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.credentials {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()));
        cmd.arg(format!("docker://{}/{repository}:{tag}", self.host()));
        let out = cmd.output().expect("run skopeo copy");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The manifest digest `skopeo inspect` reports for `<repository>:<tag>` (for an index,
    /// the index's own digest).
    pub fn skopeo_digest(&self, repository: &str, tag: &str) -> Digest {
        let mut cmd = Self::skopeo();
        cmd.args(["inspect", "--tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            cmd.arg(format!("--creds={user}:{password}"));
        }
        cmd.arg(format!("docker://{}/{repository}:{tag}", self.host()));
        let out = cmd.output().expect("run skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON");
        Digest::parse(v["Digest"].as_str().expect("skopeo inspect has Digest"))
            .expect("skopeo's Digest parses")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS picks it; the registry binds it right after).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
