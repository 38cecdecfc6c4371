//! A minimal HTTP/1.1 keep-alive client over hyper: one connection per
//! load task, no pool in the way, so the generator spends its cycles on
//! requests rather than bookkeeping.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest any single request may take before it counts as a failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

pub struct Resp {
    pub status: u16,
    pub body: Bytes,
}

/// Parses `http://host:port` (the harness only ever targets loopback).
pub fn parse_base(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("--url must start with http://"))?;
    let hostport = rest.trim_end_matches('/');
    let addr: SocketAddr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("--url must be http://IP:PORT, got {url}"))?;
    anyhow::ensure!(addr.ip().is_loopback(), "load tests only target loopback addresses, not {}", addr.ip());
    Ok(addr)
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
        Conn { addr, host, sender: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let alive = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !alive {
            let stream = TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Resp> {
        self.send_with(method, path, token, body, None).await
    }

    /// [`Conn::send`] with one more header.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Bytes>,
        header: Option<(&str, &str)>,
    ) -> anyhow::Result<Resp> {
        let host = self.host.clone();
        let sender = self.connect().await?;
        sender.ready().await?;
        let mut req = Request::builder().method(method).uri(path).header(HOST, host);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let body = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                b
            }
            None => Bytes::new(),
        };
        let fut = async {
            let resp = sender.send_request(req.body(Full::new(body))?).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Resp { status, body })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("request timed out after {REQUEST_TIMEOUT:?}"))
            }
        }
    }

    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let r = self.send(method, path, token, body).await?;
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        Ok((r.status, v))
    }
}
