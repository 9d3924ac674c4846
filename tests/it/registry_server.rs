//! A real `docker-registry` (distribution 2.8) on 127.0.0.1 for tests, with optional htpasswd
//! basic auth or token auth, storage in a temp dir, and `skopeo` to push OCI layouts into it.
//!
//! The registry is a child process killed on drop. For token auth a small token server runs on
//! a thread here: it checks basic credentials and issues RS256 JWTs signed by `openssl` with a
//! throwaway certificate that the registry trusts (`rootcertbundle`), so the registry does the
//! real token verification. Nothing here touches the network beyond 127.0.0.1.
#![allow(dead_code)] // a toolbox: each test file uses its own part of it

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(None, false)
    }

    /// A registry requiring basic auth (htpasswd, bcrypt) for `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())), false)
    }

    /// A registry using token auth: a token server on 127.0.0.1 gives `user` / `password`
    /// every action asked for, and anonymous clients a token with no access.
    pub fn start_with_token_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())), true)
    }

    /// The identity (`OAuth2` refresh) token the token server also accepts for the user, in a
    /// `POST` with `grant_type=refresh_token` (what docker does with a helper's `<token>`).
    pub fn identity_token(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .filter(|_| self.token_server.is_some())
            .map(|(user, _)| identity_token_for(user))
    }

    /// How many tokens the token server has issued (0 without token auth).
    pub fn tokens_issued(&self) -> usize {
        self.token_server
            .as_ref()
            .map_or(0, |t| t.issued.load(Ordering::SeqCst))
    }

    fn launch(credentials: Option<(String, String)>, token: bool) -> Self {
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
        let mut token_server = None;
        if let (Some((user, password)), true) = (&credentials, token) {
            let server = TokenServer::start(dir.path(), user, password);
            writeln!(
                config,
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}",
                server.port,
                server.cert.display()
            )
            .expect("format into a String");
            token_server = Some(server);
        } else if let Some((user, password)) = &credentials {
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
            token_server,
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
        self.push(layout, repository, tag, &["--preserve-digests"]);
    }

    /// Like [`TestRegistry::push_oci_layout`], but converted to Docker media types (schema 2
    /// manifests, manifest lists): digests change.
    pub fn push_oci_layout_as_docker(&self, layout: &Path, repository: &str, tag: &str) {
        self.push(layout, repository, tag, &["--format=v2s2"]);
    }

    fn push(&self, layout: &Path, repository: &str, tag: &str, extra: &[&str]) {
        let mut cmd = Self::skopeo();
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        cmd.args(extra);
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

    /// The manifest (or index) bytes as `skopeo inspect --raw` prints them.
    pub fn skopeo_raw(&self, repository: &str, tag: &str) -> Vec<u8> {
        let mut cmd = Self::skopeo();
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            cmd.arg(format!("--creds={user}:{password}"));
        }
        cmd.arg(format!("docker://{}/{repository}:{tag}", self.host()));
        let out = cmd.output().expect("run skopeo inspect --raw");
        assert!(
            out.status.success(),
            "skopeo inspect --raw failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
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

const TOKEN_SERVICE: &str = "imgstore-test-registry";

fn identity_token_for(user: &str) -> String {
    format!("imgstore-identity-token-of-{user}")
}
const TOKEN_ISSUER: &str = "imgstore-test-issuer";

/// The token server behind [`TestRegistry::start_with_token_auth`]: one thread, one request per
/// connection.
#[derive(Debug)]
struct TokenServer {
    port: u16,
    cert: PathBuf,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> Self {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=imgstore-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(out.status.success(), "openssl req failed: {out:?}");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl x509");
        assert!(der.status.success(), "openssl x509 failed: {der:?}");
        let header = format!(
            r#"{{"typ":"JWT","alg":"RS256","x5c":["{}"]}}"#,
            base64(&der.stdout, STD)
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("token server addr").port();
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let expected = format!(
            "Basic {}",
            base64(format!("{user}:{password}").as_bytes(), STD)
        );
        let state = TokenState {
            key,
            header: base64(header.as_bytes(), URL),
            expected,
            user: user.to_owned(),
            issued: Arc::clone(&issued),
        };
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    state.serve(conn);
                }
            }
        });
        Self {
            port,
            cert,
            issued,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TokenState {
    key: PathBuf,
    header: String,
    expected: String,
    user: String,
    issued: Arc<AtomicUsize>,
}

impl TokenState {
    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.starts_with("POST ") {
            self.serve_refresh(conn, &head);
            return;
        }
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let authorization = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        });
        let (status, body) = match authorization {
            Some(a) if a != self.expected => (
                "401 Unauthorized",
                r#"{"details":"bad credentials"}"#.to_owned(),
            ),
            authorization => {
                let granted = authorization.is_some();
                (
                    "200 OK",
                    format!(
                        r#"{{"token":"{}","expires_in":600}}"#,
                        self.token(target, granted)
                    ),
                )
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes());
    }

    /// An `OAuth2` refresh-token grant: the form must carry the user's identity token.
    fn serve_refresh(&self, mut conn: TcpStream, head: &str) {
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length.min(1 << 16)];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let field = |name: &str| {
            body.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| percent_decode(v))
            })
        };
        let ok = field("grant_type").as_deref() == Some("refresh_token")
            && field("refresh_token") == Some(identity_token_for(&self.user));
        let (status, body) = if ok {
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"{}","expires_in":600}}"#,
                    self.token(&format!("/token?{body}"), true)
                ),
            )
        } else {
            (
                "401 Unauthorized",
                r#"{"details":"bad refresh token"}"#.to_owned(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes());
    }

    /// A JWT granting the scopes in `target`'s query (all of them if `granted`, else none).
    fn token(&self, target: &str, granted: bool) -> String {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut access = Vec::new();
        for pair in query.split('&') {
            let Some(("scope", scope)) = pair.split_once('=') else {
                continue;
            };
            let scope = percent_decode(scope);
            // repository:<name>:<action,action>
            let mut parts = scope.splitn(3, ':');
            if let (Some(kind), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            {
                let actions: Vec<String> = if granted {
                    actions.split(',').map(|a| format!("{a:?}")).collect()
                } else {
                    Vec::new()
                };
                access.push(format!(
                    r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                    actions.join(",")
                ));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let sub = if granted { self.user.as_str() } else { "" };
        let claims = format!(
            r#"{{"iss":"{TOKEN_ISSUER}","sub":"{sub}","aud":"{TOKEN_SERVICE}","exp":{},"nbf":{},"iat":{},"jti":"imgstore-{n}","access":[{}]}}"#,
            now + 600,
            now - 60,
            now - 60,
            access.join(",")
        );
        let signing_input = format!("{}.{}", self.header, base64(claims.as_bytes(), URL));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run openssl dgst -sign");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(signing_input.as_bytes())
            .expect("write to openssl");
        let out = child.wait_with_output().expect("wait for openssl");
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{signing_input}.{}", base64(&out.stdout, URL))
    }
}

const STD: (&[u8; 64], bool) = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    true,
);
const URL: (&[u8; 64], bool) = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    false,
);

/// base64 with the given alphabet and padding choice (JWTs use unpadded base64url).
fn base64(data: &[u8], (alphabet, pad): (&[u8; 64], bool)) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
