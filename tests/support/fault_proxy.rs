//! A raw TCP server in front of a token endpoint that forwards, or misbehaves on demand: refuses
//! connections, hangs, answers slowly, resets mid-body, truncates JSON, or answers a status.
//! One request per connection (give the client `pool_max_idle_per_host(0)`), so that every
//! request sees the current mode.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub enum Mode {
    /// Pass the request to the real endpoint.
    Forward,
    /// Nobody listens: connection refused.
    Refuse,
    /// Accept, read the request, never answer.
    Hang,
    /// Forward, but only after this delay.
    Slow(Duration),
    /// Send headers and part of the body, then reset the connection.
    ResetMidBody,
    /// A complete response whose JSON body is cut short.
    TruncatedJson,
    /// Answer these statuses in turn, with `Retry-After` when given, body plain text.
    Status(Vec<u16>, Option<u64>),
}

pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
}

struct State {
    mode: Mode,
    statuses_sent: usize,
    attempts: Vec<Instant>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(task) = self.state.lock().unwrap().listener.take() {
            task.abort();
        }
    }
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Forward,
            statuses_sent: 0,
            attempts: Vec::new(),
            listener: None,
        }));
        let proxy = Self {
            addr,
            target,
            state,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let state = Arc::clone(&self.state);
        let target = self.target;
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                tokio::spawn(handle(socket, target, state));
            }
        });
        self.state.lock().unwrap().listener = Some(task);
    }

    /// The URL of `path` on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Switches the behaviour for the next requests.
    pub async fn set_mode(&self, mode: Mode) {
        let was_refusing = {
            let mut state = self.state.lock().unwrap();
            let was = matches!(state.mode, Mode::Refuse);
            state.mode = mode.clone();
            state.statuses_sent = 0;
            was
        };
        match (was_refusing, matches!(mode, Mode::Refuse)) {
            (false, true) => {
                // Stop listening: connections are refused.
                let task = self.state.lock().unwrap().listener.take();
                if let Some(task) = task {
                    task.abort();
                    let _ = task.await;
                }
            }
            (true, false) => {
                // Listen again on the same port.
                let mut attempt = 0;
                let listener = loop {
                    match TcpListener::bind(self.addr).await {
                        Ok(listener) => break listener,
                        Err(err) if attempt < 50 => {
                            attempt += 1;
                            let _ = err;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(err) => panic!("cannot listen on {} again: {err}", self.addr),
                    }
                };
                self.serve(listener);
            }
            _ => {}
        }
    }

    /// When each request arrived (a refused connection is not one).
    pub fn attempts(&self) -> Vec<Instant> {
        self.state.lock().unwrap().attempts.clone()
    }
}

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body).
async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return Some(buffer);
            }
        }
    }
}

async fn handle(mut socket: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let mode = {
        let mut state = state.lock().unwrap();
        state.attempts.push(Instant::now());
        match state.mode.clone() {
            Mode::Status(statuses, retry_after) => {
                let status = statuses[state.statuses_sent % statuses.len()];
                state.statuses_sent += 1;
                Mode::Status(vec![status], retry_after)
            }
            mode => mode,
        }
    };
    match mode {
        Mode::Forward | Mode::Refuse => forward(socket, target, &request).await,
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            forward(socket, target, &request).await;
        }
        Mode::Hang => {
            // Keep the connection open and silent until the client gives up.
            let mut sink = [0u8; 64];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Mode::ResetMidBody => {
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"access_token\":\"abc",
                )
                .await;
            let _ = socket.flush().await;
            // SO_LINGER 0: closing sends a reset instead of a clean end.
            let _ = socket.set_zero_linger();
            drop(socket);
        }
        Mode::TruncatedJson => {
            let body = b"{\"access_token\":\"abc\",\"token_ty";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body).await;
            let _ = socket.shutdown().await;
        }
        Mode::Status(statuses, retry_after) => {
            let status = statuses[0];
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let retry = retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{reason}",
                reason.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    }
}

async fn forward(mut socket: TcpStream, target: SocketAddr, request: &[u8]) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    if upstream.write_all(request).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
}
