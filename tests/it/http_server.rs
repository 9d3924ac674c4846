//! A small real HTTP/1.1 server on 127.0.0.1 for download tests: routes are set by the test,
//! one request per connection (`Connection: close`), stopped and joined when dropped.
//!
//! Reusable by any test module (`crate::http_server::{Server, Route}`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the server answers on one path.
#[derive(Clone, Debug)]
pub enum Route {
    /// 200 with `Content-Length` and this body.
    Bytes {
        /// The body.
        body: Arc<[u8]>,
        /// The Content-Type header.
        content_type: &'static str,
    },
    /// 200 with `Content-Length`, the file's bytes streamed from disk.
    File(PathBuf),
    /// A redirect (301/302/303/307/308) to `location` (a path on this server or a full URL).
    Redirect {
        /// The status code.
        status: u16,
        /// The Location header.
        location: String,
    },
    /// This status with a short text body.
    Status(u16),
    /// 200 announcing `declared` bytes in `Content-Length`, then sending only `body` and closing.
    Short {
        /// The announced length.
        declared: u64,
        /// What is actually sent.
        body: Arc<[u8]>,
    },
    /// 200 with `Transfer-Encoding: chunked` (no length known up front).
    Chunked {
        /// The body.
        body: Arc<[u8]>,
        /// Bytes per chunk.
        chunk: usize,
    },
    /// 200, chunked, zeros forever (until the client goes away or the server stops).
    Endless,
    /// These exact bytes (status line, headers and body), then close: for odd servers.
    Raw(Arc<[u8]>),
    /// 200 with `Content-Length`; headers at once, then a pause before the body.
    Slow {
        /// The body.
        body: Arc<[u8]>,
        /// The pause.
        delay: Duration,
    },
}

impl Route {
    /// 200 with these bytes as `application/octet-stream`.
    pub fn bytes(body: impl Into<Vec<u8>>) -> Route {
        Route::Bytes {
            body: body.into().into(),
            content_type: "application/octet-stream",
        }
    }

    /// 200 with this text as `text/html`.
    pub fn html(page: &str) -> Route {
        Route::Bytes {
            body: page.as_bytes().into(),
            content_type: "text/html; charset=utf-8",
        }
    }

    /// A 302 to `location`.
    pub fn redirect(location: &str) -> Route {
        Route::Redirect {
            status: 302,
            location: location.to_owned(),
        }
    }
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    requests: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// The running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Start on 127.0.0.1 with an ephemeral port and no routes (everything is 404).
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    thread::spawn(move || serve(conn, &shared));
                }
            })
        };
        Server {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Answer `path` (starting with `/`) with `route` from now on.
    pub fn route(&self, path: &str, route: Route) -> &Self {
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), route);
        self
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request lines received so far, as `"<METHOD> <path>"`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A URL where nothing listens, for refused connections: a port just released on 127.0.0.2,
/// an address no test server binds, so a parallel test cannot take the port in between.
pub fn refused_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.2:0").expect("binding 127.0.0.2:0");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    format!("http://{addr}{path}")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn head(status: u16, headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Read the request head; returns `(method, path)`.
fn read_request(conn: &TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header).ok()?;
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    Some((method, path))
}

fn serve(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((method, path)) = read_request(&conn) else {
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    shared
        .requests
        .lock()
        .unwrap()
        .push(format!("{method} {path}"));
    let route = shared.routes.lock().unwrap().get(&path).cloned();
    // Write errors mean the client left; nothing to do about them in a test server.
    let _ = respond(&mut conn, route, shared);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn respond(conn: &mut TcpStream, route: Option<Route>, shared: &Shared) -> std::io::Result<()> {
    let octets = || ("Content-Type", "application/octet-stream".to_owned());
    match route {
        None => status(conn, 404),
        Some(Route::Status(code)) => status(conn, code),
        Some(Route::Bytes { body, content_type }) => {
            conn.write_all(&head(
                200,
                &[
                    ("Content-Type", content_type.to_owned()),
                    ("Content-Length", body.len().to_string()),
                ],
            ))?;
            conn.write_all(&body)
        }
        Some(Route::File(path)) => {
            let mut file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            conn.write_all(&head(200, &[octets(), ("Content-Length", len.to_string())]))?;
            std::io::copy(&mut file, conn).map(drop)
        }
        Some(Route::Redirect { status, location }) => conn.write_all(&head(
            status,
            &[("Location", location), ("Content-Length", "0".to_owned())],
        )),
        Some(Route::Short { declared, body }) => {
            conn.write_all(&head(
                200,
                &[octets(), ("Content-Length", declared.to_string())],
            ))?;
            conn.write_all(&body)
        }
        Some(Route::Chunked { body, chunk }) => {
            conn.write_all(&head(
                200,
                &[octets(), ("Transfer-Encoding", "chunked".to_owned())],
            ))?;
            for piece in body.chunks(chunk.max(1)) {
                write_chunk(conn, piece)?;
            }
            conn.write_all(b"0\r\n\r\n")
        }
        Some(Route::Endless) => {
            conn.write_all(&head(
                200,
                &[octets(), ("Transfer-Encoding", "chunked".to_owned())],
            ))?;
            let zeros = vec![0u8; 64 * 1024];
            while !shared.stop.load(Ordering::SeqCst) {
                write_chunk(conn, &zeros)?;
            }
            Ok(())
        }
        Some(Route::Raw(bytes)) => conn.write_all(&bytes),
        Some(Route::Slow { body, delay }) => {
            conn.write_all(&head(
                200,
                &[octets(), ("Content-Length", body.len().to_string())],
            ))?;
            conn.flush()?;
            let step = Duration::from_millis(20);
            let mut waited = Duration::ZERO;
            while waited < delay && !shared.stop.load(Ordering::SeqCst) {
                thread::sleep(step);
                waited += step;
            }
            conn.write_all(&body)
        }
    }
}

fn status(conn: &mut TcpStream, code: u16) -> std::io::Result<()> {
    let body = format!("{code} {}\n", reason(code));
    conn.write_all(&head(
        code,
        &[
            ("Content-Type", "text/plain".to_owned()),
            ("Content-Length", body.len().to_string()),
        ],
    ))?;
    conn.write_all(body.as_bytes())
}

fn write_chunk(conn: &mut TcpStream, piece: &[u8]) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
    conn.write_all(piece)?;
    conn.write_all(b"\r\n")
}

/// Fetch `path` with a bare-bones client (no ureq), for testing the server itself.
fn raw_get(server: &Server, path: &str) -> Vec<u8> {
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn server_answers_routes_and_404() {
    let server = Server::start();
    server.route("/a", Route::bytes(b"hello".to_vec()));
    let a = raw_get(&server, "/a");
    assert!(a.starts_with(b"HTTP/1.1 200 OK\r\n"), "{a:?}");
    assert!(a.ends_with(b"\r\n\r\nhello"));
    let missing = raw_get(&server, "/missing");
    assert!(missing.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
    assert_eq!(server.requests(), ["GET /a", "GET /missing"]);
}

/// Dropping the server closes its listening socket. Proof: the address can be bound again.
/// Other tests bind ephemeral ports in parallel and may take the freed one first, which makes a
/// try inconclusive (not a failure), so a few servers are tried.
#[test]
fn server_stops_when_dropped() {
    for _ in 0..20 {
        let server = Server::start();
        let addr = server.addr();
        drop(server);
        match TcpListener::bind(addr) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => panic!("binding {addr} again: {e}"),
        }
    }
    panic!("the address of a dropped server was never free again: still listening");
}
