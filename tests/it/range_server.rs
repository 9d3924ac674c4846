//! A real HTTP/1.1 file server on 127.0.0.1 for ranged-download tests and benches: keep-alive,
//! `Range` / `If-Range` / `If-None-Match` / `If-Modified-Since`, and switches for the ways real
//! servers and CDNs differ or fail — a bytes-per-second cap per connection, connections dropped
//! after N body bytes, `Range` ignored or answered with 200, no or weak validators, HEAD refused,
//! the file replaced after N bytes served. It counts requests, connections and body bytes
//! served. Stopped and joined when dropped. Shared with `examples/range_server.rs` (the bench's
//! server).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Which validators the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validators {
    /// A strong `ETag` (and `Last-Modified`).
    Strong,
    /// Only a weak `ETag`.
    Weak,
    /// Only `Last-Modified`, one hour before `Date` (a strong validator by RFC 9110).
    LastModified,
    /// Nothing.
    None,
}

/// How the server treats `Range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// 206 for a satisfiable range, `If-Range` honoured.
    Honour,
    /// No `Accept-Ranges`; every GET is a 200 of the whole file.
    Ignore,
    /// Advertises `Accept-Ranges: bytes` yet answers every range with a 200 of the whole file.
    Answer200,
    /// Honours `Range` but ignores `If-Range` (a 206 of whatever it has now).
    IgnoreIfRange,
}

/// The server's behaviour; change it between requests with [`RangeServer::set`].
#[derive(Clone, Debug)]
pub struct Mode {
    /// Bytes per second per response; 0 = no cap.
    pub rate: u64,
    /// Close a connection after this many body bytes on it (`None`: never).
    pub drop_after: Option<u64>,
    /// `Range` handling.
    pub ranges: Ranges,
    /// Validators sent.
    pub validators: Validators,
    /// Answer HEAD with 405.
    pub refuse_head: bool,
    /// After this many body bytes served in total, the file becomes `next` (and its validators
    /// change with it).
    pub change_after: Option<u64>,
}

impl Default for Mode {
    fn default() -> Self {
        Mode {
            rate: 0,
            drop_after: None,
            ranges: Ranges::Honour,
            validators: Validators::Strong,
            refuse_head: true,
            change_after: None,
        }
    }
}

/// One version of the file.
struct Version {
    body: Arc<[u8]>,
    tag: u32,
}

struct Shared {
    mode: Mutex<Mode>,
    current: Mutex<Version>,
    next: Mutex<Option<Arc<[u8]>>>,
    stop: AtomicBool,
    served: AtomicU64,
    accepted: AtomicU64,
    log: Mutex<Vec<Request>>,
    conns: Mutex<Vec<TcpStream>>,
    busy: std::sync::atomic::AtomicUsize,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Whether it carried `If-None-Match` or `If-Modified-Since`.
    pub conditional: bool,
    /// The status answered.
    pub status: u16,
}

/// The running server; dropping it stops it.
pub struct RangeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl RangeServer {
    /// Serve `body` at every path, on 127.0.0.1 with an ephemeral port.
    pub fn start(body: impl Into<Arc<[u8]>>, mode: Mode) -> RangeServer {
        Self::start_on("127.0.0.1:0", body, mode)
    }

    /// Serve `body` on `addr` (a 127.0.0.1 address).
    pub fn start_on(addr: &str, body: impl Into<Arc<[u8]>>, mode: Mode) -> RangeServer {
        let listener = TcpListener::bind(addr).expect("binding the range server");
        assert!(
            listener.local_addr().unwrap().ip().is_loopback(),
            "loopback only"
        );
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            current: Mutex::new(Version {
                body: body.into(),
                tag: 1,
            }),
            next: Mutex::new(None),
            stop: AtomicBool::new(false),
            served: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            busy: std::sync::atomic::AtomicUsize::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let mut conns = Vec::new();
                while !shared.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            shared.accepted.fetch_add(1, Ordering::SeqCst);
                            let shared = Arc::clone(&shared);
                            conns.push(thread::spawn(move || serve(conn, &shared)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                    conns.retain(|c: &JoinHandle<()>| !c.is_finished());
                }
                for c in shared.conns.lock().unwrap().drain(..) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        RangeServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Change the behaviour.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Serve `body` from now on (a new version: new validators).
    pub fn replace(&self, body: impl Into<Arc<[u8]>>) {
        let mut cur = self.shared.current.lock().unwrap();
        cur.body = body.into();
        cur.tag += 1;
    }

    /// What [`Mode::change_after`] switches to.
    pub fn then_serve(&self, body: impl Into<Arc<[u8]>>) {
        *self.shared.next.lock().unwrap() = Some(body.into());
    }

    /// Body bytes written to clients so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Wait until no response is being sent (a client that died mid-body: the server notices
    /// at its next write), so counts taken afterwards are the next client's alone.
    pub fn quiesce(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.shared.busy.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "responses still in flight");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Forget the counts.
    pub fn reset_counts(&self) {
        self.shared.served.store(0, Ordering::SeqCst);
        self.shared.accepted.store(0, Ordering::SeqCst);
        self.shared.log.lock().unwrap().clear();
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake every connection thread blocked reading an idle keep-alive connection.
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Head {
    method: String,
    range: Option<String>,
    if_range: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let method = line.split_whitespace().next()?.to_owned();
    let mut head = Head {
        method,
        range: None,
        if_range: None,
        if_none_match: None,
        if_modified_since: None,
    };
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h).ok()?;
        if n == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = Some(v.trim().to_owned());
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => head.range = v,
                "if-range" => head.if_range = v,
                "if-none-match" => head.if_none_match = v,
                "if-modified-since" => head.if_modified_since = v,
                _ => {}
            }
        }
    }
    Some(head)
}

const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
const DATE: &str = "Tue, 01 Dec 2026 11:00:00 GMT";

fn serve(conn: TcpStream, shared: &Shared) {
    let Ok(write) = conn.try_clone() else { return };
    if let Ok(c) = conn.try_clone() {
        shared.conns.lock().unwrap().push(c);
    }
    let mut reader = BufReader::new(conn);
    let mut out = write;
    let mut on_conn = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        shared.busy.fetch_add(1, Ordering::SeqCst);
        let r = respond(&mut out, &head, shared, &mut on_conn);
        shared.busy.fetch_sub(1, Ordering::SeqCst);
        if r.is_err() {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn respond(
    out: &mut TcpStream,
    req: &Head,
    shared: &Shared,
    on_conn: &mut u64,
) -> std::io::Result<()> {
    let mode = shared.mode.lock().unwrap().clone();
    let (body, tag) = {
        let cur = shared.current.lock().unwrap();
        (Arc::clone(&cur.body), cur.tag)
    };
    let etag = format!("\"v{tag}-{}\"", body.len());
    let last_modified = if tag == 1 {
        LAST_MODIFIED.to_owned()
    } else {
        format!("Tue, 01 Dec 2026 10:{:02}:00 GMT", tag.min(59))
    };
    let mut headers: Vec<(&str, String)> = vec![("Date", DATE.to_owned())];
    match mode.validators {
        Validators::Strong => {
            headers.push(("ETag", etag.clone()));
            headers.push(("Last-Modified", last_modified.clone()));
        }
        Validators::Weak => headers.push(("ETag", format!("W/{etag}"))),
        Validators::LastModified => headers.push(("Last-Modified", last_modified.clone())),
        Validators::None => {}
    }
    let sent_etag = headers
        .iter()
        .find(|(k, _)| *k == "ETag")
        .map(|(_, v)| v.clone());
    let sent_lm = headers
        .iter()
        .find(|(k, _)| *k == "Last-Modified")
        .map(|(_, v)| v.clone());
    let log = |status| {
        shared.log.lock().unwrap().push(Request {
            method: req.method.clone(),
            range: req.range.clone(),
            conditional: req.if_none_match.is_some() || req.if_modified_since.is_some(),
            status,
        });
    };
    if req.method == "HEAD" && mode.refuse_head {
        log(405);
        return write_head(out, 405, &[("Content-Length", "0".to_owned())]);
    }
    let not_modified = match (&req.if_none_match, &req.if_modified_since) {
        (Some(inm), _) => sent_etag.as_deref().is_some_and(|e| {
            let strip = |s: &str| s.trim_start_matches("W/").to_owned();
            strip(inm) == strip(e)
        }),
        (None, Some(ims)) => sent_lm.as_deref() == Some(ims.as_str()),
        (None, None) => false,
    };
    if not_modified {
        log(304);
        return write_head(out, 304, &headers);
    }
    let if_range_ok = match &req.if_range {
        None => true,
        Some(_) if mode.ranges == Ranges::IgnoreIfRange => true,
        Some(v) => {
            sent_etag.as_deref() == Some(v.as_str()) && !v.starts_with("W/")
                || sent_lm.as_deref() == Some(v.as_str())
        }
    };
    let len = body.len() as u64;
    let wanted = req.range.as_deref().and_then(|r| parse_range(r, len));
    let honour = matches!(mode.ranges, Ranges::Honour | Ranges::IgnoreIfRange);
    if mode.ranges != Ranges::Ignore {
        headers.push(("Accept-Ranges", "bytes".to_owned()));
    }
    let (status, start, end) = match wanted {
        Some((a, b)) if honour && if_range_ok => (206, a, b),
        _ => (200, 0, len),
    };
    if status == 206 {
        headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
    }
    headers.push(("Content-Type", "application/octet-stream".to_owned()));
    headers.push(("Content-Length", (end - start).to_string()));
    log(status);
    write_head(out, status, &headers)?;
    if req.method == "HEAD" {
        return Ok(());
    }
    send_body(
        out,
        &body[start as usize..end as usize],
        &mode,
        shared,
        on_conn,
    )
}

fn send_body(
    out: &mut TcpStream,
    body: &[u8],
    mode: &Mode,
    shared: &Shared,
    on_conn: &mut u64,
) -> std::io::Result<()> {
    const SLICE: usize = 64 << 10;
    let started = Instant::now();
    let mut sent = 0u64;
    for piece in body.chunks(SLICE) {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let mut piece = piece;
        if let Some(limit) = mode.drop_after {
            let room = limit.saturating_sub(*on_conn);
            if room == 0 {
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            piece = &piece[..piece.len().min(room as usize)];
        }
        out.write_all(piece)?;
        sent += piece.len() as u64;
        *on_conn += piece.len() as u64;
        let total = shared
            .served
            .fetch_add(piece.len() as u64, Ordering::SeqCst)
            + piece.len() as u64;
        if let Some(after) = mode.change_after {
            if total >= after {
                if let Some(next) = shared.next.lock().unwrap().take() {
                    let mut cur = shared.current.lock().unwrap();
                    cur.body = next;
                    cur.tag += 1;
                }
            }
        }
        if mode.rate > 0 {
            let due = Duration::from_nanos(
                u64::try_from(u128::from(sent) * 1_000_000_000 / u128::from(mode.rate))
                    .unwrap_or(u64::MAX),
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    Ok(())
}

fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse().ok()?
    };
    (a <= b && a < len).then(|| (a, b.min(len - 1) + 1))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        405 => "Method Not Allowed",
        _ => "Unknown",
    }
}

fn write_head(out: &mut TcpStream, status: u16, headers: &[(&str, String)]) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())
}
